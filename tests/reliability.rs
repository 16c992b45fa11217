//! Reliability: receivers that misbehave get the exact outcome the design promises, and accepted
//! events survive repeated hard kills.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::receiver::{Receiver, Reply};
use support::{Hookline, LOCAL, TestEnv, wait_until};

const WAIT: Duration = Duration::from_secs(60);

async fn subscribe(env: &TestEnv, name: &str, url: &str, spec: Value) {
    env.subscribe(name, url, spec, ("True", "Active")).await;
}

async fn log(h: &Hookline, ns: &str, sub: &str) -> Vec<Value> {
    let url = format!("{}/v1/namespaces/{ns}/webhooksubscriptions/{sub}/deliveries?limit=500", h.ingest);
    let v: Value = reqwest::get(url).await.expect("log").json().await.expect("json");
    v["items"].as_array().cloned().unwrap_or_default()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// Multi-threaded: receivers that stall must not stall the test itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_receivers_get_the_exact_outcome() {
    let Some(env) = TestEnv::with_crds("receiver-faults").await else { return };
    let h = env.start_hookline(LOCAL).await;
    let slow = Receiver::start().await;
    slow.set_default(Reply::Delay(Duration::from_secs(5)));
    let drip = Receiver::start().await;
    drip.set_default(Reply::Drip(Duration::from_millis(400), 20));
    let huge = Receiver::start().await;
    huge.set_default(Reply::Huge(100 * 1024 * 1024));
    let failing = Receiver::start().await;
    failing.set_default(Reply::Status(503));
    let closed = format!("http://127.0.0.1:{}/closed", support::free_port());
    let one_try = json!({"retryPolicy": {"maxAttempts": 1}});
    let two_tries = json!({"retryPolicy": {"maxAttempts": 2, "initialBackoff": "100ms"}});
    subscribe(
        &env,
        "timeout",
        &slow.url,
        json!({"endpoint": {"url": slow.url, "timeoutSeconds": 1}, "retryPolicy": {"maxAttempts": 1}}),
    )
    .await;
    subscribe(
        &env,
        "drip",
        &drip.url,
        json!({"endpoint": {"url": drip.url, "timeoutSeconds": 2}, "retryPolicy": {"maxAttempts": 1}}),
    )
    .await;
    subscribe(&env, "huge", &huge.url, one_try.clone()).await;
    subscribe(&env, "failing", &failing.url, two_tries.clone()).await;
    subscribe(&env, "refused", &closed, two_tries).await;
    let rss_before = rss_kb(h.child.id().expect("pid"));
    h.publish_json(&env.namespace, json!({"specversion": "1.0", "id": "f1", "source": "/s", "type": "t"}))
        .await;

    let ns = env.namespace.clone();
    let last = |sub: &'static str| {
        let (h, ns) = (&h, ns.clone());
        async move {
            wait_until(&format!("{sub} finished"), WAIT, || async {
                let entries = log(h, &ns, sub).await;
                entries.first().filter(|e| e["outcome"] != "retry").cloned()
            })
            .await
        }
    };
    let timeout = last("timeout").await;
    assert_eq!(
        (timeout["error"].as_str(), timeout["outcome"].as_str()),
        (Some("timed out"), Some("deadLettered")),
        "{timeout}"
    );
    assert!(
        timeout["durationMs"].as_u64().is_some_and(|d| (900..3000).contains(&d)),
        "cut at timeoutSeconds: {timeout}"
    );
    let drip = last("drip").await;
    assert_eq!(drip["statusCode"], 200, "a slow body after a 200 is still a success: {drip}");
    assert!(
        drip["durationMs"].as_u64().is_some_and(|d| d < 4000),
        "the body read is bounded by the timeout: {drip}"
    );
    let huge_entry = last("huge").await;
    assert_eq!(huge_entry["outcome"], "delivered", "{huge_entry}");
    let rss_after = rss_kb(h.child.id().expect("pid"));
    assert!(
        rss_after < rss_before + 50 * 1024,
        "a 100 MB answer is not read into memory: {rss_before} → {rss_after} kB"
    );
    let failing = last("failing").await;
    assert_eq!((failing["statusCode"].as_u64(), failing["attempt"].as_u64()), (Some(503), Some(2)));
    let refused = last("refused").await;
    assert!(refused["error"].as_str().unwrap_or("").contains("connection"), "{refused}");
}

/// Publish `n` events in batches; returns their ids.
async fn publish_many(h: &Hookline, ns: &str, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in ids.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"specversion": "1.0", "id": id, "source": "/crash", "type": "t"}))
            .collect();
        let (status, body) = h
            .publish(
                ns,
                &[("content-type", "application/cloudevents-batch+json")],
                Value::Array(batch).to_string(),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_repeated_kill_9_and_duplicates_keep_their_id() {
    let Some(env) = TestEnv::with_crds("crash-recovery").await else { return };
    let data = env.data_dir();
    let rx = Receiver::start().await;
    rx.set_default(Reply::Delay(Duration::from_millis(2)));
    let mut h = env.start_hookline_in(&data, LOCAL).await;
    subscribe(&env, "s", &rx.url, json!({"delivery": {"maxConcurrency": 4}, "retryPolicy": {"initialBackoff": "200ms", "maxBackoff": "1s"}})).await;
    let mut accepted = Vec::new();
    // Three rounds: publish while the receiver drains, kill -9 at a different point each time.
    for round in 0..3 {
        accepted.extend(publish_many(&h, &env.namespace, &format!("r{round}"), 1_700).await);
        let already = rx.received().len();
        rx.wait_for(already + 50 * (round + 1), WAIT).await;
        h.kill().await;
        h = env.start_hookline_in(&data, LOCAL).await;
    }
    wait_until("every accepted event delivered", Duration::from_secs(180), || async {
        let got: HashSet<String> = rx.received().iter().map(|r| r.header("webhook-id")).collect();
        accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in rx.received() {
        assert_eq!(r.header("webhook-id"), r.header("ce-id"), "a duplicate carries the same webhook-id");
        *seen.entry(r.header("webhook-id")).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash recovery: {} accepted, {} deliveries, {duplicates} duplicates",
        accepted.len(),
        rx.received().len()
    );
    assert_eq!(seen.len(), accepted.len(), "nothing delivered that was not accepted");
}
