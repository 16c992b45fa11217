//! Endpoint health: the circuit breaker stops sending to an endpoint that keeps failing, probes
//! it after a cooldown (doubling after a failed probe), and resumes once a probe succeeds; each
//! step shows as the `Healthy` condition, Kubernetes Events and `hookline_circuit_open`.

mod support;

use std::time::Duration;

use hookline::api::WebhookSubscription;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use support::builder::TestSubscription;
use support::receiver::{Receiver, Reply};
use support::{LOCAL, TestEnv, wait_until};

const WAIT: Duration = Duration::from_secs(45);

/// The circuit breaker's Events on subscription `name`, oldest first: reason, message, and how
/// many times it happened (Events of one reason are aggregated into a series).
async fn events(env: &TestEnv, name: &str) -> Vec<(String, String, i32)> {
    let api: Api<Event> = env.api();
    let mut list = api.list(&ListParams::default()).await.expect("events").items;
    list.retain(|e| e.involved_object.name.as_deref() == Some(name));
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Circuit")))
        .map(|e| {
            let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1);
            (e.reason.unwrap_or_default(), e.message.unwrap_or_default(), count)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_probes_reopens_probes_and_closes() {
    let env = TestEnv::with_crds("circuit-breaker").await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    // Three failures open the breaker; the first probe fails too; the second succeeds.
    rx.script([Reply::Status(503), Reply::Status(503), Reply::Status(503), Reply::Status(500)]);
    let mut sub =
        serde_json::to_value(WebhookSubscription::test("flaky", &rx.url).concurrency(1)).expect("json");
    support::merge(
        &mut sub,
        json!({"spec": {
            "delivery": {"circuitBreaker": {"consecutiveFailures": 3, "cooldown": "2s", "maxCooldown": "4s"}},
            "retryPolicy": {"maxAttempts": 20, "initialBackoff": "100ms", "maxBackoff": "200ms"},
        }}),
    );
    env.create_active(serde_json::from_value(sub).expect("subscription")).await;
    for i in 0..5 {
        h.publish_json(
            &env.namespace,
            json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/shop", "type": "order.created", "data": {}}),
        )
        .await;
    }

    // Open: the condition says so, with the last error and the next probe.
    let api: Api<WebhookSubscription> = env.api();
    let open = wait_until("Healthy=False/CircuitOpen", WAIT, || async {
        let sub = api.get("flaky").await.ok()?;
        let c = sub.status?.conditions.into_iter().find(|c| c.type_ == "Healthy")?;
        (c.reason == "CircuitOpen").then_some(c)
    })
    .await;
    assert_eq!(open.status, "False");
    assert!(open.message.contains("3 attempts in a row failed, the last with HTTP 503"), "{}", open.message);
    assert!(open.message.contains("until a probe at"), "{}", open.message);

    // Every event is delivered in the end: the first four requests failed (the receiver's
    // script), every later one succeeded.
    let requests = wait_until("all five events delivered", WAIT, || async {
        let received = rx.received();
        let mut delivered: Vec<String> = received.iter().skip(4).map(|r| r.header("ce-id")).collect();
        delivered.sort();
        delivered.dedup();
        (delivered.len() == 5).then_some(received)
    })
    .await;
    // Nothing went out while the breaker was open: the first probe no sooner than the cooldown
    // after the third failure, the second no sooner than twice that after the first.
    assert!(requests[3].at - requests[2].at >= Duration::from_secs(2), "the first probe waited the cooldown");
    assert!(requests[4].at - requests[3].at >= Duration::from_secs(4), "the second waited twice as long");
    let healthy = wait_until("Healthy=True again", WAIT, || async {
        let sub = api.get("flaky").await.ok()?;
        let c = sub.status?.conditions.into_iter().find(|c| c.type_ == "Healthy")?;
        (c.status == "True").then_some(c)
    })
    .await;
    assert_eq!(healthy.reason, "Delivering");
    let found = wait_until("CircuitOpened twice, then CircuitClosed", WAIT, || async {
        let found = events(&env, "flaky").await;
        let summary: Vec<(String, i32)> = found.iter().map(|(r, _, n)| (r.clone(), *n)).collect();
        (summary == [("CircuitOpened".to_string(), 2), ("CircuitClosed".to_string(), 1)]).then_some(found)
    })
    .await;
    assert!(found[0].1.contains("3 attempts in a row failed"), "{}", found[0].1);
    assert_eq!(h.metric_sum("hookline_circuit_open").await, Some(0.0));
}
