//! A bad day: endpoints that hang while events pile up. Hookline's memory stays within its event
//! budget plus a fixed base, and every accepted event is delivered once the endpoints answer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{Hookline, LOCAL, StoreAt, TestEnv, wait_until};
use hookline::api::WebhookSubscription;
use serde_json::{Value, json};

const SUBSCRIPTIONS: usize = 10;
const EVENTS_EACH: usize = 1000;
const EVENT_BYTES: usize = 16 * 1024;
const BATCH: usize = 50;
const BUDGET: usize = 8 * 1024 * 1024;
/// What Hookline may use above its resident size before the backlog, besides the event budget:
/// per pending job (~100 B), requests in flight, SQLite's page caches, ingest buffers, and what
/// the allocator keeps. Without the budget, the cached events alone would be 160 MB.
const BASE: usize = 64 * 1024 * 1024;

/// Publish `EVENTS_EACH` distinct events of `EVENT_BYTES` to each subscription (type `t<i>`).
async fn publish_backlog(h: &Hookline, ns: &str) {
    let data = "x".repeat(EVENT_BYTES);
    for sub in 0..SUBSCRIPTIONS {
        for first in (0..EVENTS_EACH).step_by(BATCH) {
            let batch: Vec<Value> = (first..first + BATCH)
                .map(|i| json!({"specversion": "1.0", "id": format!("{sub}-{i}"), "source": "/backlog", "type": format!("t{sub}"), "data": data}))
                .collect();
            let (status, body) = h
                .publish(
                    ns,
                    &[("content-type", "application/cloudevents-batch+json")],
                    Value::from(batch).to_string(),
                    None,
                )
                .await;
            assert_eq!(status, 202, "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_endpoints_keep_memory_within_the_budget_and_get_everything_later() {
    let env = TestEnv::with_crds("backlog-memory").await;
    let budget = format!("--event-cache-bytes={BUDGET}");
    let mut flags = LOCAL.to_vec();
    flags.push(&budget);
    let h = env.start_hookline(&flags).await;
    let pid = h.child.id().expect("pid");
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Delay(Duration::from_secs(3600)));
    for sub in 0..SUBSCRIPTIONS {
        let hung = WebhookSubscription::test(&format!("hung-{sub}"), &receiver.url);
        let hung = hung.for_types(&[&format!("t{sub}")]).timeout(5).concurrency(1).backoff("1s", "2s");
        env.create_active(hung).await;
    }
    let before = crate::support::process_memory(pid, "VmRSS") as usize;
    publish_backlog(&h, &env.namespace).await;
    // Every dispatcher has its backlog queued, each with one request hanging.
    wait_until("every subscription has its backlog queued", Duration::from_secs(60), || async {
        let depth = h.metric_sum("hookline_queue_depth").await?;
        (depth >= (SUBSCRIPTIONS * EVENTS_EACH) as f64).then_some(())
    })
    .await;
    let cached = h.metric("hookline_event_cache_bytes").await.expect("cache gauge");
    let peak = crate::support::process_memory(pid, "VmHWM") as usize;
    eprintln!(
        "resident before {} MB, peak {} MB, cached events {} MB (budget {} MB)",
        before >> 20,
        peak >> 20,
        cached as usize >> 20,
        BUDGET >> 20
    );
    assert!(
        cached as usize <= BUDGET + SUBSCRIPTIONS * (EVENT_BYTES + 1024),
        "cache {cached} over the budget"
    );
    assert!(
        peak <= before + BUDGET + BASE,
        "peak resident {} MB exceeds {} MB before + {} MB budget + {} MB base",
        peak >> 20,
        before >> 20,
        BUDGET >> 20,
        BASE >> 20
    );

    // The endpoints answer again: everything is delivered (hung attempts time out and retry).
    receiver.set_default(Reply::Status(200));
    let subs = env.api::<WebhookSubscription>();
    wait_until("every event is delivered", Duration::from_secs(240), || async {
        let list = subs.list(&Default::default()).await.ok()?;
        let delivered: u64 = list
            .items
            .iter()
            .filter_map(|s| s.status.as_ref()?.delivery_stats.as_ref())
            .map(|d| d.delivered)
            .sum();
        (delivered >= (SUBSCRIPTIONS * EVENTS_EACH) as u64).then_some(())
    })
    .await;
    let ids: HashSet<String> = receiver.received().iter().map(|r| r.header("ce-id")).collect();
    assert_eq!(ids.len(), SUBSCRIPTIONS * EVENTS_EACH, "every distinct event reached its endpoint");
}

/// A tmpfs of a few MiB mounted for one test (as root), unmounted and removed when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(name: &str, mib: u32) -> SmallDisk {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", crate::support::free_port()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs at {} failed (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Publish a batch of `n` 16 KiB events with ids `<prefix>-<i>`: (status, Retry-After, body).
async fn publish_batch(h: &Hookline, ns: &str, prefix: &str, n: usize) -> (u16, Option<String>, Value) {
    let data = "x".repeat(EVENT_BYTES);
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"specversion": "1.0", "id": format!("{prefix}-{i}"), "source": "/disk", "type": "t", "data": data}))
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/namespaces/{ns}/events", h.ingest))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::from(batch).to_string())
        .send()
        .await
        .expect("publish");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_string());
    (status, retry_after, resp.json().await.unwrap_or(Value::Null))
}

async fn delivered(subs: &kube::Api<WebhookSubscription>, name: &str) -> Option<u64> {
    Some(subs.get(name).await.ok()?.status?.delivery_stats?.delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_events_with_507_and_accepts_again_once_delivered() {
    let env = TestEnv::with_crds("backlog-disk").await;
    let disk = SmallDisk::mount("hookline-small-disk", 40);
    let mut flags = LOCAL.to_vec();
    flags.push("--min-free-disk=8388608");
    let h = env.start_hookline_in(&StoreAt::Sqlite(disk.dir.clone()), &flags).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(503));
    // Without a breaker the backlog drains as soon as the endpoint recovers; with one, how long
    // it stays open would depend on how long filling the disk took on this machine.
    let sub = WebhookSubscription::test("disk", &receiver.url).backoff("1s", "2s").without_circuit_breaker();
    env.create_active(sub).await;

    // Publish until the store is short of space; nothing refused may be lost, nothing accepted
    // may be missing later.
    let mut accepted = 0usize;
    let filling = std::time::Instant::now();
    let refusal = loop {
        assert!(accepted < 10_000, "40 MiB of 16 KiB events filled without a 507");
        let (status, retry_after, body) =
            publish_batch(&h, &env.namespace, &format!("b{accepted}"), 10).await;
        match status {
            202 => accepted += 10,
            507 => break (retry_after, body),
            other => panic!("publishing answered {other}: {body}"),
        }
    };
    let (retry_after, body) = refusal;
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("short of space") && message.contains("--min-free-disk"), "{body}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok()), "507 carries Retry-After");
    let (status, _, _) = publish_batch(&h, &env.namespace, "refused-again", 1).await;
    assert_eq!(status, 507, "still refused while nothing is delivered");
    let (status, _) =
        crate::support::http_get(&format!("{}/readyz", h.metrics)).await.expect("Hookline runs");
    assert_eq!(status, 200);
    eprintln!("accepted {accepted} events of 16 KiB in {:?} before the 507", filling.elapsed());

    // The endpoint recovers: the backlog drains, then publishing works again.
    receiver.set_default(Reply::Status(200));
    let subs = env.api::<WebhookSubscription>();
    wait_until("the backlog is delivered", Duration::from_secs(120), || async {
        (delivered(&subs, "disk").await? >= accepted as u64).then_some(())
    })
    .await;
    let (status, _, body) = publish_batch(&h, &env.namespace, "after", 10).await;
    assert_eq!(status, 202, "publishing works again once the backlog is delivered: {body}");
    wait_until("the new batch is delivered too", Duration::from_secs(60), || async {
        (delivered(&subs, "disk").await? >= accepted as u64 + 10).then_some(())
    })
    .await;
    let ids: HashSet<String> = receiver.received().iter().map(|r| r.header("ce-id")).collect();
    for i in (0..accepted).step_by(10) {
        assert!(ids.contains(&format!("b{i}-0")), "b{i}-0 was accepted and must have reached the endpoint");
    }
    assert!(!ids.iter().any(|id| id.starts_with("refused-again")), "a refused event is never delivered");
}
