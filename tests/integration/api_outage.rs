//! Kubernetes API server faults: delivery goes on for known subscriptions while the API server is
//! down, status catches up once it is back, and nothing retries in a hot loop meanwhile. The test
//! runs its own control plane (stopping the shared one would break every other test).

use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::Receiver;
use crate::support::{LOCAL, PrivateControlPlane, TestEnv, install_crds, wait_until};
use hookline::api::WebhookSubscription;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/outage", "type": "t"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_goes_on_while_the_api_server_is_down_and_status_catches_up() {
    let plane = PrivateControlPlane::start("api-outage-cluster");
    let env = TestEnv::start_on("api-outage", plane.kubeconfig()).await;
    install_crds(&env.client).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url)).await;
    h.publish_json(&env.namespace, event("before")).await;
    rx.wait_for(1, WAIT).await;
    let requests_before = h.metric_sum("hookline_api_requests_total").await.expect("metrics");

    plane.stop_api_server();
    // Keep publishing until Hookline has had to fall back on the signing Secret it read before
    // the outage (its cache lasts 5 s): deliveries must not wait for the API server.
    let mut published = 1;
    wait_until("Hookline to deliver on the Secret it read before the outage", WAIT, || {
        published += 1;
        let id = format!("during-{published}");
        let h = &h;
        let namespace = env.namespace.clone();
        async move {
            h.publish_json(&namespace, event(&id)).await;
            let log = std::fs::read_to_string(&h.log).unwrap_or_default();
            log.contains("cannot re-read Secret; using the last value read").then_some(())
        }
    })
    .await;
    for i in 0..10 {
        h.publish_json(&env.namespace, event(&format!("after-fallback-{i}"))).await;
        published += 1;
    }
    let got = rx.wait_for(published, WAIT).await;
    assert!(
        got.iter().any(|r| r.header("ce-id") == "after-fallback-9"),
        "delivered while the API server is down"
    );

    plane.start_api_server();
    let api = env.api::<WebhookSubscription>();
    let stats = wait_until("status to count every delivery", WAIT, || async {
        let status = api.get("s").await.ok()?.status?;
        let stats = status.delivery_stats?;
        (stats.delivered >= published as u64 && status.last_delivery?.event_id == "after-fallback-9")
            .then_some(stats)
    })
    .await;
    assert_eq!(stats.pending, 0);
    let requests = h.metric_sum("hookline_api_requests_total").await.expect("metrics") - requests_before;
    assert!(
        requests < 200.0,
        "{requests} API requests from the outage until status caught up: something retries without backing off"
    );
    eprintln!("API requests from the outage until status caught up: {requests}");
}
