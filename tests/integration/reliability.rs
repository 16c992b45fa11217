//! Reliability: receivers that misbehave get the exact outcome the design promises, and accepted
//! events survive repeated hard kills.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{Backend, Hookline, LOCAL, POSTGRES, SQLITE, TestEnv, publish_batch, wait_until};
use hookline::api::WebhookSubscription;
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const PATCHES: &str = r#"hookline_api_requests_total{method="PATCH"}"#;

async fn log(h: &Hookline, ns: &str, sub: &str) -> Vec<Value> {
    let url = format!("{}/v1/namespaces/{ns}/webhooksubscriptions/{sub}/deliveries?limit=500", h.ingest);
    let v: Value = reqwest::get(url).await.expect("log").json().await.expect("json");
    v["items"].as_array().cloned().unwrap_or_default()
}

fn rss_kb(pid: u32) -> u64 {
    crate::support::process_memory(pid, "VmHWM") / 1024
}

// Multi-threaded: receivers that stall must not stall the test itself.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_receivers_get_the_exact_outcome(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("receiver-faults", store).await;
    let h = env.start_hookline(LOCAL).await;
    let slow = Receiver::start().await;
    slow.set_default(Reply::Delay(Duration::from_secs(5)));
    let drip = Receiver::start().await;
    drip.set_default(Reply::Drip(Duration::from_millis(400), 20));
    let huge = Receiver::start().await;
    huge.set_default(Reply::Huge(100 * 1024 * 1024));
    let failing = Receiver::start().await;
    failing.set_default(Reply::Status(503));
    let closed = format!("http://127.0.0.1:{}/closed", crate::support::free_port());
    let reset = crate::support::receiver::resetting_endpoint().await;
    let one_try = |name, url: &str| WebhookSubscription::test(name, url).max_attempts(1);
    let two_tries =
        |name, url: &str| WebhookSubscription::test(name, url).max_attempts(2).initial_backoff("100ms");
    env.create_active(one_try("timeout", &slow.url).timeout(1)).await;
    env.create_active(one_try("drip", &drip.url).timeout(2)).await;
    env.create_active(one_try("huge", &huge.url)).await;
    env.create_active(two_tries("failing", &failing.url)).await;
    env.create_active(two_tries("refused", &closed)).await;
    env.create_active(two_tries("reset", &reset)).await;
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
    let reset = last("reset").await;
    assert_eq!(
        (reset["statusCode"].as_u64(), reset["attempt"].as_u64(), reset["outcome"].as_str()),
        (None, Some(2), Some("deadLettered")),
        "a reset connection is retried like any transport error: {reset}"
    );
    assert!(!reset["error"].as_str().unwrap_or("").is_empty(), "the error is described: {reset}");
}

/// Publish `n` events in batches; returns their ids.
/// Publish batches of 100 as fast as Hookline takes them until `stop` is set or a request fails
/// (Hookline was killed). Returns every id sent and the ids of the batches answered `202`.
async fn publish_until(
    ingest: String,
    ns: String,
    prefix: String,
    accepted_count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let client = reqwest::Client::new();
    let (mut sent, mut accepted) = (Vec::new(), Vec::new());
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let ids: Vec<String> = (0..100).map(|i| format!("{prefix}-{n}-{i}")).collect();
        let events: Vec<(String, &str)> = ids.iter().map(|id| (id.clone(), "t")).collect();
        sent.extend(ids.iter().cloned());
        match publish_batch(&client, &ingest, &ns, "/crash", &events).await {
            202 => {
                accepted.extend(ids);
                accepted_count.fetch_add(100, Ordering::SeqCst);
            }
            // Killed mid-request (or refused): not accepted, though it may have been stored.
            _ => break,
        }
    }
    (sent, accepted)
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_repeated_kill_9_and_duplicates_keep_their_id(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("crash-recovery", store).await;
    let data = env.new_store().await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Delay(Duration::from_millis(2)));
    let mut h = env.start_hookline_in(&data, LOCAL).await;
    env.create_active(WebhookSubscription::test("s", &rx.url).concurrency(4).backoff("200ms", "1s")).await;
    let (mut sent, mut accepted): (HashSet<String>, HashSet<String>) = (HashSet::new(), HashSet::new());
    // Three rounds: kill -9 while a publisher is mid-request, the receiver is draining, and a
    // status write has just been sent.
    for round in 0..3 {
        // The Hookline (re)started is delivering again (on PostgreSQL, once the killed one's
        // lease ran out), so what this round publishes does not pile up meanwhile.
        let before = rx.received().len();
        if round > 0 {
            wait_until("delivery to resume after the restart", WAIT, || async {
                (rx.received().len() > before).then_some(())
            })
            .await;
        }
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn(publish_until(
            h.ingest.clone(),
            env.namespace.clone(),
            format!("r{round}"),
            count.clone(),
            stop.clone(),
        ));
        let already = rx.received().len();
        wait_until("the publisher and the receiver both busy", WAIT, || async {
            (count.load(Ordering::SeqCst) >= 1_700 && rx.received().len() >= already + 50).then_some(())
        })
        .await;
        // Kill the moment Hookline sends its next PATCH (the status writer's, every second here):
        // the write is then in flight or just landed.
        // Polled back to back (a status write takes milliseconds), within a deadline.
        let before = h.metric(PATCHES).await.unwrap_or(0.0);
        let deadline = Instant::now() + WAIT;
        while h.metric(PATCHES).await.unwrap_or(0.0) <= before {
            assert!(Instant::now() < deadline, "no status write within {WAIT:?}");
        }
        h.kill().await;
        stop.store(true, Ordering::SeqCst);
        let (ids, ok) = publisher.await.expect("publisher");
        sent.extend(ids);
        accepted.extend(ok);
        h = env.start_hookline_in(&data, LOCAL).await;
    }
    assert!(accepted.len() >= 5_000, "only {} accepted", accepted.len());
    wait_until("every accepted event delivered", Duration::from_secs(180), || async {
        let got: HashSet<String> = rx.received().iter().map(|r| r.header("webhook-id")).collect();
        accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    // Status written again by the last process, despite the writes the kills cut short.
    let api = env.api::<hookline::api::WebhookSubscription>();
    wait_until("status to show an empty queue", WAIT, || async {
        let stats = api.get("s").await.ok()?.status?.delivery_stats?;
        (stats.pending == 0 && stats.delivered > 0).then_some(())
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
    let unacknowledged = seen.keys().filter(|id| !accepted.contains(id.as_str())).count();
    eprintln!(
        "crash recovery: {unacknowledged} delivered events were stored but their 202 was cut off by a kill"
    );
    assert!(seen.keys().all(|id| sent.contains(id)), "nothing delivered that was not published");
}
