//! The load: event ids and bodies, publishing as fast as possible or at a steady rate, the
//! bare-POST baseline, and the fail-over phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Value, json};

use crate::receiver::{Paths, Recv, drained};

/// The id of the `n`th event: counting up (`sequential`), or a UUID (version 4 in form, its bits
/// scattered by odd multipliers, which keep it unique). Unique either way.
pub fn event_id(n: u64, sequential: bool) -> String {
    if sequential {
        return format!("e{n}");
    }
    let (a, b) = (
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        (n ^ 0x5851_F42D_4C95_7F2D).wrapping_mul(0xD6E8_FEB8_6659_FD93),
    );
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// A new event id, never handed out before by this process nor (starting from the clock) by an
/// earlier run.
pub fn next_event_id(sequential: bool) -> String {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(now_us()));
    event_id(next.fetch_add(1, Ordering::Relaxed), sequential)
}

/// The `partitionkey` of the next event: `k0` … `k{keys-1}` in turn; none when `keys` is 0.
pub fn next_partition_key(keys: u64) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (keys > 0).then(|| format!("k{}", NEXT.fetch_add(1, Ordering::Relaxed) % keys))
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn payload() -> String {
    // A 1 KiB JSON payload.
    let filler = "x".repeat(1024 - 40);
    json!({"order": 1, "filler": filler}).to_string()
}

/// What a saturation run measured.
pub struct Saturated {
    /// Requests per second.
    pub rate: f64,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Requests that were not answered with a 2xx.
    pub failures: u64,
    /// How long each answered request took, in µs, sorted.
    pub answers_us: Vec<u64>,
}

/// POST as fast as `concurrency` clients can for `seconds`.
pub async fn saturate(
    concurrency: usize,
    seconds: u64,
    make: impl Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> anyhow::Result<Saturated> {
    let make = Arc::new(make);
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, counter) = (make.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let (mut failures, mut answers) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match make(n).send().await {
                    Ok(r) if r.status().is_success() => answers.push(sent.elapsed().as_micros() as u64),
                    _ => failures += 1,
                }
            }
            (failures, answers)
        }));
    }
    let (mut failures, mut answers_us) = (0, Vec::new());
    for t in tasks {
        let (f, a) = t.await?;
        failures += f;
        answers_us.extend(a);
    }
    answers_us.sort_unstable();
    let n = counter.load(Ordering::Relaxed);
    Ok(Saturated { rate: n as f64 / start.elapsed().as_secs_f64(), requests: n, failures, answers_us })
}

/// The physical baseline: the same body POSTed straight to the receiver, same HTTP stack, as fast
/// as `concurrency` clients can for `seconds`; requests per second.
pub async fn direct(
    client: &reqwest::Client,
    port: u16,
    body: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let url = format!("http://127.0.0.1:{port}/direct");
    let (c, b) = (client.clone(), body.to_string());
    let saturated = saturate(concurrency, seconds, move |n| {
        c.post(&url).header("ce-id", n.to_string()).header("content-type", "application/json").body(b.clone())
    })
    .await?;
    Ok(saturated.rate)
}

/// Publish `rate` events per second (`make` makes the `n`th), each to the ten subscriptions of a
/// namespace; after a few seconds `kill -9` the replica `victim`, go on until every subscription
/// has had a delivery since, then until everything accepted has arrived (returned: deliveries
/// expected). Reports the longest
/// time from the kill to a subscription's next delivery, and how many subscriptions waited more
/// than a second (those the victim owned).
pub async fn failover(
    recv: &Recv,
    make: impl Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
    rate: u64,
    victim: u32,
) -> anyhow::Result<(serde_json::Map<String, Value>, u64)> {
    const WARM_UP: Duration = Duration::from_secs(5);
    const LIMIT: Duration = Duration::from_secs(300);
    *recv.failover.lock().expect("lock") = Some(Paths::default());
    recv.count.store(0, Ordering::Relaxed);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (start, mut sends) = (Instant::now(), Vec::new());
    let mut gaps: Vec<f64> = loop {
        ticker.tick().await;
        let req = make(sends.len() as u64);
        sends.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().is_success()).unwrap_or(false)
        }));
        let mut guard = recv.failover.lock().expect("lock");
        let paths = guard.as_mut().context("failover record")?;
        match paths.killed {
            None if start.elapsed() >= WARM_UP => {
                let n = paths.before.len();
                anyhow::ensure!(n == 10, "only {n} of 10 subscriptions received events before the kill");
                let status = std::process::Command::new("kill").args(["-9", &victim.to_string()]).status()?;
                anyhow::ensure!(status.success(), "kill -9 {victim} failed");
                paths.killed = Some(Instant::now());
            }
            Some(at) if paths.first_after.len() == paths.before.len() => {
                break paths.first_after.values().map(|t| t.duration_since(at).as_secs_f64()).collect();
            }
            Some(at) => {
                let waiting = paths.before.len() - paths.first_after.len();
                anyhow::ensure!(
                    at.elapsed() < LIMIT,
                    "{waiting} subscriptions had no delivery {LIMIT:?} after the kill"
                );
            }
            None => {}
        }
    };
    *recv.failover.lock().expect("lock") = None;
    let mut accepted = 0;
    for s in sends {
        accepted += u64::from(s.await.unwrap_or(false));
    }
    drained(recv, accepted * 10, LIMIT).await?;
    gaps.sort_by(f64::total_cmp);
    let mut result = serde_json::Map::new();
    result.insert(
        "failover_s".into(),
        ((gaps.last().copied().unwrap_or_default() * 1000.0).round() / 1000.0).into(),
    );
    let rounded: Vec<f64> = gaps.iter().map(|g| (g * 1000.0).round() / 1000.0).collect();
    result.insert("failover_gaps_s".into(), rounded.into());
    result.insert("subscriptions_taken_over".into(), gaps.iter().filter(|g| **g > 1.0).count().into());
    result.insert("failover_accepted".into(), accepted.into());
    Ok((result, accepted * 10))
}

/// Makes the `n`th request of a saturation phase.
pub type Publisher = Box<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>;

/// After a saturation phase that began at `start` and sent `requests`, `failed` of them refused,
/// each worth `each` deliveries: wait until all of them arrived (at most `limit`), then return
/// deliveries per second over the whole phase and how many there were.
pub async fn delivered_rate(
    recv: &Recv,
    start: Instant,
    requests: u64,
    failed: u64,
    each: u64,
    limit: Duration,
) -> anyhow::Result<(f64, u64)> {
    let expected = requests.saturating_sub(failed) * each;
    drained(recv, expected, limit).await?;
    let eps = expected as f64 / start.elapsed().as_secs_f64();
    recv.count.store(0, Ordering::Relaxed);
    Ok((eps, expected))
}
