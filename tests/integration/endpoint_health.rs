//! Endpoint health and order: the circuit breaker stops sending to an endpoint that keeps
//! failing, probes it after a cooldown (doubling after a failed probe), and resumes once a probe
//! succeeds; each step shows as the `Healthy` condition, Kubernetes Events and
//! `hookline_circuit_open`. Ordered delivery keeps the events of a partition key (or of the whole
//! subscription) one at a time, in the order they were accepted, through failures and a kill -9.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Received, Receiver, Reply};
use crate::support::{Backend, Hookline, LOCAL, POSTGRES, SQLITE, TestEnv, wait_until};
use hookline::api::{Ordering, WebhookSubscription};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use rstest::rstest;
use serde_json::json;

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
    crate::support::merge(
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

/// Events `from..to`, each with its partition key (`e{i}` has key `k{i % keys}`).
fn keyed_events(from: usize, to: usize, keys: usize) -> Vec<(String, String)> {
    (from..to).map(|i| (format!("e{i}"), format!("k{}", i % keys))).collect()
}

/// Publish `events` in batches of 20, each batch once the one before was accepted.
async fn publish_keyed(h: &Hookline, namespace: &str, events: &[(String, String)]) {
    for batch in events.chunks(20) {
        let batch: Vec<_> = batch
            .iter()
            .map(|(id, key)| json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.updated", "partitionkey": key}))
            .collect();
        let body = serde_json::Value::Array(batch).to_string();
        let (status, answer) =
            h.publish(namespace, &[("content-type", "application/cloudevents-batch+json")], body, None).await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// The event ids in the order of their first successful delivery, and how many requests each
/// took.
fn first_successes(received: &[Received]) -> (Vec<String>, HashMap<String, usize>) {
    let mut order = Vec::new();
    let mut requests: HashMap<String, usize> = HashMap::new();
    for r in received {
        let id = r.header("ce-id");
        let n = requests.entry(id.clone()).or_default();
        *n += 1;
        if (200..300).contains(&r.status) && !order.contains(&id) {
            order.push(id);
        }
    }
    (order, requests)
}

/// Wait until every event of `published` was delivered; then, of each key (every event's when
/// `by_key` is false), the first successful deliveries are in the order of publishing.
async fn assert_delivered_in_order(rx: &Receiver, published: &[(String, String)], by_key: bool) -> usize {
    let order = wait_until("every event delivered", Duration::from_secs(120), || async {
        let (order, _) = first_successes(&rx.received());
        (order.len() >= published.len()).then_some(order)
    })
    .await;
    let key_of: HashMap<&str, &str> = published.iter().map(|(id, key)| (id.as_str(), key.as_str())).collect();
    let lane = |id: &str| if by_key { key_of[id].to_string() } else { String::new() };
    let mut expected: HashMap<String, Vec<&str>> = HashMap::new();
    for (id, _) in published {
        expected.entry(lane(id)).or_default().push(id);
    }
    let mut delivered: HashMap<String, Vec<&str>> = HashMap::new();
    for id in &order {
        delivered.entry(lane(id)).or_default().push(id);
    }
    assert_eq!(delivered, expected, "first successful deliveries out of order");
    let (_, requests) = first_successes(&rx.received());
    requests.values().map(|n| n - 1).sum()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_key_is_delivered_in_order_one_at_a_time_through_failures_and_a_kill_9(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("ordering-by-key", store).await;
    let data = env.new_store().await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Delay(Duration::from_millis(3)));
    rx.fail_every(5, 503);
    let h = env.start_hookline_in(&data, LOCAL).await;
    let sub = WebhookSubscription::test("by-key", &rx.url)
        .ordered(Ordering::PartitionKey)
        .concurrency(10)
        .backoff("100ms", "200ms")
        .max_attempts(50);
    env.create_active(sub).await;

    // Half the events, a kill -9 while they are being delivered, then the other half.
    let published = keyed_events(0, 400, 10);
    publish_keyed(&h, &env.namespace, &published[..200]).await;
    rx.wait_for(100, WAIT).await;
    h.kill().await;
    let h = env.start_hookline_in(&data, LOCAL).await;
    publish_keyed(&h, &env.namespace, &published[200..]).await;

    let retries = assert_delivered_in_order(&rx, &published, true).await;
    assert_eq!(rx.max_in_flight_per_key(), 1, "two requests of one key were in flight together");
    assert!(rx.max_in_flight() > 1, "the keys did not flow side by side");
    eprintln!("ordering by key: 400 events, {} requests, {retries} repeated", rx.received().len());
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_ordering_never_has_two_requests_in_flight(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("ordering-strict", store).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Delay(Duration::from_millis(3)));
    rx.fail_every(5, 500);
    let h = env.start_hookline(LOCAL).await;
    let sub = WebhookSubscription::test("strict", &rx.url)
        .ordered(Ordering::Strict)
        .concurrency(8)
        .backoff("100ms", "200ms")
        .max_attempts(50);
    env.create_active(sub).await;
    let published = keyed_events(0, 60, 7);
    publish_keyed(&h, &env.namespace, &published).await;
    assert_delivered_in_order(&rx, &published, false).await;
    assert_eq!(rx.max_in_flight(), 1, "two requests in flight under Strict");
}

/// The subscription's `Ready` condition: (status, reason, message).
async fn ready(api: &Api<WebhookSubscription>, name: &str) -> Option<(String, String, String)> {
    let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_for_disable_after_disables_and_the_enable_annotation_enables_again() {
    let env = TestEnv::with_crds("disable-after").await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(503));
    let mut sub =
        serde_json::to_value(WebhookSubscription::test("dying", &rx.url).failing_fast()).expect("json");
    crate::support::merge(
        &mut sub,
        json!({"spec": {"retryPolicy": {"maxAttempts": 100, "initialBackoff": "200ms", "maxBackoff": "500ms", "disableAfter": "10s"}}}),
    );
    env.create_active(serde_json::from_value(sub).expect("subscription")).await;
    let publish = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.created", "data": {}});
    h.publish_json(&env.namespace, publish("e0")).await;

    // Failing for 10 s disables: Ready=False/Disabled, status.disabled, a Warning Event.
    let api: Api<WebhookSubscription> = env.api();
    let (_, _, message) = wait_until("Ready=False/Disabled", WAIT, || async {
        ready(&api, "dying").await.filter(|(s, r, _)| s == "False" && r == "Disabled")
    })
    .await;
    assert!(message.starts_with("No delivery succeeded for 10s while attempts kept failing"), "{message}");
    assert!(message.contains("set the annotation hookline.dev/enable to a new value"), "{message}");
    let status = api.get("dying").await.expect("get").status.expect("status");
    let disabled = status.disabled.expect("status.disabled");
    assert_eq!(disabled.reason, "FailingTooLong");
    let first = rx.received()[0].wall;
    let since = status.delivery_stats.and_then(|s| s.failing_since).expect("failingSince");
    assert!(since.0.as_second() <= jiff::Timestamp::try_from(first).expect("time").as_second() + 1);
    wait_until("a Warning Event Disabled", WAIT, || async {
        let api: Api<Event> = env.api();
        let list = api.list(&ListParams::default()).await.ok()?.items;
        list.into_iter()
            .find(|e| e.reason.as_deref() == Some("Disabled") && e.type_.as_deref() == Some("Warning"))
    })
    .await;
    // Nothing is sent while disabled (the retries were 500 ms apart): no request arrives more
    // than a second after the disabling attempt, over the next two seconds at least.
    let disabled_at = std::time::SystemTime::from(disabled.time.0);
    let quiet_until = disabled_at + Duration::from_secs(3);
    wait_until("three seconds past the disabling attempt", WAIT, || async {
        (std::time::SystemTime::now() >= quiet_until).then_some(())
    })
    .await;
    let late = rx.received().iter().filter(|r| r.wall > disabled_at + Duration::from_secs(1)).count();
    assert_eq!(late, 0, "requests went out while the subscription was disabled");

    // The annotation enables it again: the queued event is delivered, the record goes.
    rx.set_default(Reply::Status(200));
    env.kubectl(&["annotate", "webhooksubscription", "dying", "hookline.dev/enable=1"]);
    wait_until("e0 delivered after enabling", WAIT, || async {
        rx.received().iter().any(|r| r.status == 200 && r.header("ce-id") == "e0").then_some(())
    })
    .await;
    wait_until("Ready=True and status.disabled gone", WAIT, || async {
        let sub = api.get("dying").await.ok()?;
        let ready = sub.status.as_ref()?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && sub.status?.disabled.is_none()).then_some(())
    })
    .await;

    // 410 Gone disables at once, and a new annotation value enables it again too.
    rx.set_default(Reply::Status(410));
    h.publish_json(&env.namespace, publish("e1")).await;
    let (_, _, message) = wait_until("Ready=False/Disabled after 410", WAIT, || async {
        ready(&api, "dying").await.filter(|(s, r, _)| s == "False" && r == "Disabled")
    })
    .await;
    assert!(message.starts_with("The endpoint answered 410 Gone"), "{message}");
    rx.set_default(Reply::Status(200));
    env.kubectl(&["annotate", "--overwrite", "webhooksubscription", "dying", "hookline.dev/enable=2"]);
    wait_until("Ready=True again", WAIT, || async {
        ready(&api, "dying").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    h.publish_json(&env.namespace, publish("e2")).await;
    wait_until("e2 delivered", WAIT, || async {
        rx.received().iter().any(|r| r.status == 200 && r.header("ce-id") == "e2").then_some(())
    })
    .await;
}
