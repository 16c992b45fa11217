//! Load generator and fast receiver for `hack/bench.sh`: measures a bare HTTP POST (the physical
//! baseline) and Hookline's publish → deliver path on loopback, and prints one JSON line.
//! Bounded in time and count; talks only to loopback.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Hookline's ingest base URL; several (comma-separated) for replicas, which publishers take
    /// in turn.
    #[arg(long, value_delimiter = ',')]
    ingest: Vec<String>,
    /// Hookline's metrics base URL (one per replica).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Hookline's pid, for RSS and CPU (one per replica: RSS is the largest, CPU the sum).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Namespace with one subscription (fan-out 1) pointing at the receiver.
    #[arg(long, default_value = "")]
    ns1: String,
    /// Namespace with ten subscriptions (fan-out 10) pointing at the receiver.
    #[arg(long, default_value = "")]
    ns10: String,
    /// Port the receiver listens on (the subscriptions point there).
    #[arg(long)]
    receiver_port: u16,
    /// Seconds per saturation phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Offered load for the latency phase, events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the latency phase (default: `--seconds`); a longer window takes in what a
    /// server does now and then under steady load (autovacuum, checkpoints, pruning).
    #[arg(long)]
    latency_seconds: Option<u64>,
    /// Only run the receiver (answering handshakes) until interrupted; for `hack/bench.sh --scale`.
    #[arg(long)]
    receive_only: bool,
    /// Measure only the store (no HTTP): accept and deliver this many events, once with ids that
    /// count up and once with UUIDs, each in a new store, and print the CPU time per event of each.
    #[arg(long, default_value_t = 0)]
    store_events: u64,
    /// Where `--store-events` keeps its SQLite stores (a scratch directory).
    #[arg(long, default_value = "")]
    store_dir: String,
    /// `--store-events` on PostgreSQL instead of SQLite: a scratch database, whose `hookline`
    /// schema is dropped before each run.
    #[arg(long)]
    database_url: Option<String>,
    /// Event ids that count up (`e1`, `e2`, …) instead of the UUIDs most producers send; the
    /// store's dedup check used to be cheaper for them.
    #[arg(long)]
    sequential_ids: bool,
    /// Events carry a CloudEvents `partitionkey`, one of this many in turn (0: none); for the
    /// subscriptions' `delivery.ordering: PartitionKey`.
    #[arg(long, default_value_t = 0)]
    partition_keys: u64,
    /// Measure only CEL filters (no HTTP): the most expensive expressions `spec.filter.cel`
    /// allows, each over an event of this many bytes (e.g. 262144, the default
    /// `--max-event-bytes`), and print the time per evaluation of each.
    #[arg(long, default_value_t = 0)]
    cel_worst_case: usize,
    /// The phases to run (all but `failover` by default); fewer make profiling one phase quicker.
    #[arg(long, value_delimiter = ',', default_value = "direct,single,batch,fanout10,latency")]
    phases: Vec<Phase>,
    /// For the `failover` phase: the replica to `kill -9` (the others' ingest URLs are the
    /// `--ingest` ones; the ten subscriptions of `--ns10` each have an endpoint path of their own).
    #[arg(long)]
    kill: Option<u32>,
    /// Write the latency phase to this file second by second (see `latency_trace`); shows
    /// whether the slow events come together (a checkpoint, a vacuum, a periodic task) or
    /// scattered (the host).
    #[arg(long)]
    latency_trace: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Direct,
    Single,
    Batch,
    Fanout10,
    Latency,
    /// Publish steadily into `--ns10`, `kill -9` the replica `--kill`, and measure how long each
    /// subscription goes without a delivery.
    Failover,
}

#[derive(Default)]
struct Recv {
    count: AtomicU64,
    /// When each event that carries a publish timestamp was published (µs since the epoch) and
    /// how long it took to arrive (µs).
    latencies: Mutex<Vec<(u64, u64)>>,
    /// The failover phase's record of endpoint paths (`None` in the other phases).
    failover: Mutex<Option<Paths>>,
}

/// The endpoint paths that received deliveries before the kill, and when each first received
/// one after it.
#[derive(Default)]
struct Paths {
    killed: Option<Instant>,
    before: HashSet<String>,
    first_after: HashMap<String, Instant>,
}

/// The id of the `n`th event: counting up (`sequential`), or a UUID (version 4 in form, its bits
/// scattered by odd multipliers, which keep it unique). Unique either way.
fn event_id(n: u64, sequential: bool) -> String {
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
fn next_event_id(sequential: bool) -> String {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(now_us()));
    event_id(next.fetch_add(1, Ordering::Relaxed), sequential)
}

/// The `partitionkey` of the next event: `k0` … `k{keys-1}` in turn; none when `keys` is 0.
fn next_partition_key(keys: u64) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (keys > 0).then(|| format!("k{}", NEXT.fetch_add(1, Ordering::Relaxed) % keys))
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn receive(State(r): State<Arc<Recv>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("ce-type").is_some_and(|t| t == "dev.hookline.subscription.validation") {
        // Answer the ownership handshake synchronously.
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["validationCode"].as_str().map(str::to_string));
        return axum::Json(json!({ "validationResponse": code })).into_response();
    }
    r.count.fetch_add(1, Ordering::Relaxed);
    if let Some(paths) = r.failover.lock().expect("lock").as_mut() {
        let path = uri.path().to_string();
        match paths.killed {
            None => drop(paths.before.insert(path)),
            Some(_) => drop(paths.first_after.entry(path).or_insert_with(Instant::now)),
        }
    }
    if let Some(sent) =
        headers.get("ce-sentus").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        r.latencies.lock().expect("lock").push((sent, now_us().saturating_sub(sent)));
    }
    StatusCode::OK.into_response()
}

fn payload() -> String {
    // A 1 KiB JSON payload.
    let filler = "x".repeat(1024 - 40);
    json!({"order": 1, "filler": filler}).to_string()
}

/// POST as fast as `concurrency` clients can for `seconds`; returns requests per second.
async fn saturate(
    client: &reqwest::Client,
    concurrency: usize,
    seconds: u64,
    make: impl Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> anyhow::Result<(f64, u64)> {
    let make = Arc::new(make);
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, counter) = (make.clone(), counter.clone());
        let _ = client;
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match make(n).send().await {
                    Ok(r) if r.status().is_success() => {}
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await?;
    }
    let n = counter.load(Ordering::Relaxed);
    Ok((n as f64 / start.elapsed().as_secs_f64(), failures))
}

/// Wait until the receiver has `target` deliveries (or `limit` passes); returns the time it took.
async fn drained(r: &Recv, target: u64, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while r.count.load(Ordering::Relaxed) < target {
        if start.elapsed() > limit {
            bail!("only {} of {target} deliveries within {limit:?}", r.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// The physical baseline: the same body POSTed straight to the receiver, same HTTP stack, as fast
/// as `concurrency` clients can for `seconds`; requests per second.
async fn direct(
    client: &reqwest::Client,
    port: u16,
    body: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let url = format!("http://127.0.0.1:{port}/direct");
    let (c, b) = (client.clone(), body.to_string());
    let (eps, _) = saturate(client, concurrency, seconds, move |n| {
        c.post(&url).header("ce-id", n.to_string()).header("content-type", "application/json").body(b.clone())
    })
    .await?;
    Ok(eps)
}

/// Publish `rate` events per second (`make` makes the `n`th), each to the ten subscriptions of a
/// namespace; after a few seconds `kill -9` the replica `victim`, go on until every subscription
/// has had a delivery since, then until everything accepted has arrived (returned: deliveries
/// expected). Reports the longest
/// time from the kill to a subscription's next delivery, and how many subscriptions waited more
/// than a second (those the victim owned).
async fn failover(
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
type Publisher = Box<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>;

/// After a saturation phase that began at `start` and sent `rate` requests per second, `failed` of
/// them refused, each worth `each` deliveries: wait until all of them arrived (at most `limit`),
/// then return deliveries per second over the whole phase and how many there were.
async fn delivered_rate(
    recv: &Recv,
    start: Instant,
    rate: f64,
    failed: u64,
    each: u64,
    limit: Duration,
) -> anyhow::Result<(f64, u64)> {
    let expected = ((rate * start.elapsed().as_secs_f64()).round() as u64).saturating_sub(failed) * each;
    drained(recv, expected, limit).await?;
    let eps = expected as f64 / start.elapsed().as_secs_f64();
    recv.count.store(0, Ordering::Relaxed);
    Ok((eps, expected))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The latency phase second by second (`--latency-trace`): after a line with the phase's start
/// (to match against a server's logs), per second of publishing: the events published in it,
/// how many took over 10 ms, their p50, p99 and largest latency (ms), and when the slowest was
/// published (ms into the phase); then what the host did in that second (see [`HostSample`]),
/// `-` where no sample brackets it.
fn latency_trace(events: &[(u64, u64)], host: &[HostSample]) -> String {
    let Some(first) = events.iter().map(|&(sent, _)| sent).min() else {
        return String::new();
    };
    let mut seconds: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for &(sent, took) in events {
        seconds.entry((sent - first) / 1_000_000).or_default().push((took, sent - first));
    }
    // The sample nearest each whole second of the phase.
    let at = |second: u64| {
        let t = first + second * 1_000_000;
        host.iter().filter(|h| h.at_us.abs_diff(t) < 500_000).min_by_key(|h| h.at_us.abs_diff(t))
    };
    let start = first as f64 / 1e6;
    let mut out = format!(
        "# started at {start:.3} s after the Unix epoch\n\
         second events over_10ms p50_ms p99_ms max_ms max_sent_at_ms {}\n",
        HostSample::COLUMNS
    );
    for (second, mut second_events) in seconds {
        second_events.sort_unstable();
        let (max, max_at) =
            second_events.last().map(|&(took, at)| (took as f64 / 1000.0, at / 1000)).unwrap_or_default();
        let took: Vec<u64> = second_events.iter().map(|&(took, _)| took).collect();
        let slow = took.iter().filter(|&&t| t > 10_000).count();
        let (p50, p99) = (percentile(&took, 0.50), percentile(&took, 0.99));
        let host = match (at(second), at(second + 1)) {
            (Some(a), Some(b)) => b.since(a).to_string(),
            _ => "- - - - -".to_string(),
        };
        out += &format!("{second} {} {slow} {p50:.2} {p99:.2} {max:.2} {max_at} {host}\n", took.len());
    }
    out
}

/// The host's counters at one moment (Linux `/proc`), so that a slow second can be told apart:
/// the server's own work, or the machine (a hypervisor taking CPU time away, a disk queue).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct HostSample {
    /// When, in µs after the Unix epoch.
    at_us: u64,
    /// CPU time in ticks: running (user, nice, system, irq, softirq), idle, waiting for I/O,
    /// and stolen (a hypervisor ran someone else while this machine had work).
    busy: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
    /// Whole disks' writes completed, and milliseconds spent on writes (summed over requests,
    /// so per second of wall time it is the average number of writes in flight, times 1,000).
    writes: u64,
    write_ms: u64,
}

/// What the host did between two samples.
struct HostDelta {
    busy_pct: f64,
    steal_pct: f64,
    iowait_pct: f64,
    writes_per_s: f64,
    writes_in_flight: f64,
}

impl std::fmt::Display for HostDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} {:.0} {:.0} {:.0} {:.1}",
            self.busy_pct, self.steal_pct, self.iowait_pct, self.writes_per_s, self.writes_in_flight
        )
    }
}

impl HostSample {
    const COLUMNS: &str = "cpu_busy_pct cpu_steal_pct cpu_iowait_pct disk_writes_per_s disk_writes_in_flight";

    /// Now, or `None` where `/proc` does not say.
    fn now() -> Option<HostSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let disks: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|dir| dir.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        let diskstats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
        HostSample::parse(now_us(), &stat, &diskstats, &disks)
    }

    /// From `/proc/stat`'s `cpu` line and the lines of `/proc/diskstats` naming one of `disks`
    /// (whole disks, so that a partition's writes are not counted twice; loop and RAM disks are
    /// left out).
    fn parse(at_us: u64, stat: &str, diskstats: &str, disks: &[String]) -> Option<HostSample> {
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
        let mut sample = HostSample {
            at_us,
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3),
            iowait: field(4),
            steal: field(7),
            ..Default::default()
        };
        for line in diskstats.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(name) = f.get(2) else { continue };
            if name.starts_with("loop") || name.starts_with("ram") || !disks.iter().any(|d| d == name) {
                continue;
            }
            let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            sample.writes += number(7);
            sample.write_ms += number(10);
        }
        Some(sample)
    }

    fn since(&self, before: &HostSample) -> HostDelta {
        let ticks = |s: &HostSample| s.busy + s.idle + s.iowait + s.steal;
        let total = ticks(self).saturating_sub(ticks(before)).max(1) as f64;
        let pct = |f: fn(&HostSample) -> u64| 100.0 * f(self).saturating_sub(f(before)) as f64 / total;
        let seconds = (self.at_us.saturating_sub(before.at_us) as f64 / 1e6).max(1e-3);
        HostDelta {
            busy_pct: pct(|s| s.busy),
            steal_pct: pct(|s| s.steal),
            iowait_pct: pct(|s| s.iowait),
            writes_per_s: self.writes.saturating_sub(before.writes) as f64 / seconds,
            writes_in_flight: self.write_ms.saturating_sub(before.write_ms) as f64 / 1000.0 / seconds,
        }
    }
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

/// CPU seconds used so far by this process and, with `server`, every PostgreSQL process on the
/// host (the store's work happens there).
fn store_cpu_seconds(server: bool) -> f64 {
    let postgres = || -> Option<f64> {
        let mut sum = 0.0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres") {
                sum += proc_stats(pid).1;
            }
        }
        Some(sum)
    };
    cpu_seconds() + if server { postgres().unwrap_or(0.0) } else { 0.0 }
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else { return 0.0 };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.split_whitespace().next().is_some_and(|n| n == name || n.starts_with(&format!("{name}{{")))
        })
        .filter_map(|l| l.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// CPU seconds this process has used so far (all threads, user + system).
fn cpu_seconds() -> f64 {
    proc_stats(std::process::id()).1
}

/// The store alone, as ingest and delivery use it at once: 8 publishers accept batches of 100
/// events while each accepted job is recorded as delivered by one of 1,024 concurrent attempts
/// (dispatchers do not wait for their records). Deletes free pages that inserts then reuse, as in
/// a real run; accepting everything first and delivering afterwards would hide that cost.
/// Each kind of id in a new store.
async fn store_only(args: &Args) -> anyhow::Result<Value> {
    let mut result = json!({"events": args.store_events, "store": if args.database_url.is_some() { "postgres" } else { "sqlite" }});
    for (name, sequential) in [("sequential", true), ("uuid", false)] {
        let store: Arc<dyn hookline::store::Store> = match &args.database_url {
            Some(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute("DROP SCHEMA IF EXISTS hookline CASCADE").await?;
                Arc::new(hookline::store::PostgresStore::connect(url, 16, "hookline-bench").await?)
            }
            None => {
                let dir = std::path::Path::new(&args.store_dir).join(name);
                anyhow::ensure!(
                    !dir.exists(),
                    "{} exists: --store-dir must be a new directory",
                    dir.display()
                );
                Arc::new(hookline::store::SqliteStore::open(&dir)?)
            }
        };
        let server = args.database_url.is_some();
        result[name] = store_run(store, args.store_events, sequential, server).await?;
        if !server {
            // What a restart with all of them in the dedup window costs (the keys are read).
            let started = Instant::now();
            drop(hookline::store::SqliteStore::open(&std::path::Path::new(&args.store_dir).join(name))?);
            result[name]["reopen_ms"] = (started.elapsed().as_millis() as u64).into();
        }
    }
    let cost = |k: &str| result[k]["cpu_us_per_event"].as_f64().unwrap_or(f64::NAN);
    result["uuid_cost_ratio"] = json!((cost("uuid") / cost("sequential") * 100.0).round() / 100.0);
    Ok(result)
}

/// One run of `store_only`; `server`: count the PostgreSQL server's CPU too.
async fn store_run(
    store: Arc<dyn hookline::store::Store>,
    events: u64,
    sequential: bool,
    server: bool,
) -> anyhow::Result<Value> {
    use hookline::store::{Attempt, JobUpdate, NewEvent, SentTo, now_ms};
    const SUB: &str = "4f1c8a52-6c1e-4b8e-9d51-0d6c3b1e2a77";
    let body = payload().into_bytes();
    let payload_bytes = body.len();
    let batches = events.div_ceil(100);
    let (cpu, wall) = (store_cpu_seconds(server), Instant::now());
    let next = Arc::new(AtomicU64::new(0));
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
    let mut publishers = Vec::new();
    for _ in 0..8 {
        let (store, body, next, jobs_tx) = (store.clone(), body.clone(), next.clone(), jobs_tx.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let batch = (0..100)
                    .map(|i| NewEvent {
                        namespace: "bench".into(),
                        source: "/bench".into(),
                        event_id: event_id(b * 100 + i, sequential),
                        event_type: "bench.event".into(),
                        body: body.clone(),
                        targets: vec![SUB.into()],
                        accepted_at: now_ms(),
                        partition: None,
                    })
                    .collect();
                for (_, job_id) in store.accept(batch).await?.into_iter().flat_map(|a| a.jobs) {
                    // The attempts outlive the publishers, so the receiver is still there.
                    let _ = jobs_tx.send(job_id);
                }
            }
        }));
    }
    drop(jobs_tx);
    let mut attempts = Vec::new();
    for _ in 0..1024 {
        let (store, jobs_rx) = (store.clone(), jobs_rx.clone());
        attempts.push(tokio::spawn(async move {
            let mut recorded = 0u64;
            loop {
                let Some(job_id) = jobs_rx.lock().await.recv().await else { return anyhow::Ok(recorded) };
                let update = JobUpdate::Delivered;
                let (event_id, at) = (job_id.to_string(), now_ms());
                store
                    .record(Attempt {
                        job_id,
                        sub_uid: SUB.into(),
                        event_id,
                        event_type: "bench.event".into(),
                        attempt: 1,
                        at,
                        status: Some(200),
                        duration_ms: 1,
                        error: None,
                        update,
                        sent_to: SentTo {
                            namespace: "bench".into(),
                            subscription: "bench".into(),
                            url: "http://127.0.0.1:1/bench".into(),
                        },
                        payload_bytes,
                        fence: None,
                    })
                    .await?;
                recorded += 1;
            }
        }));
    }
    for p in publishers {
        p.await??;
    }
    let mut recorded = 0;
    for a in attempts {
        recorded += a.await??;
    }
    let (cpu, wall) = (store_cpu_seconds(server) - cpu, wall.elapsed().as_secs_f64());
    let n = recorded as f64;
    Ok(json!({
        "events": recorded,
        "cpu_us_per_event": (cpu / n * 1e7).round() / 10.0,
        "eps": (n / wall).round(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.cel_worst_case > 0 {
        cel_worst_case(args.cel_worst_case);
        return Ok(());
    }
    if args.store_events > 0 {
        println!("{}", store_only(&args).await?);
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let recv = Arc::new(Recv::default());
    let app = Router::new().fallback(receive).with_state(recv.clone());
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", args.receiver_port)).await.context("receiver port")?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if args.receive_only {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = server => {}
        }
        return Ok(());
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let body = payload();
    let sequential = args.sequential_ids;
    let keys = args.partition_keys;
    let ev = move |ns: &str, base: &str| -> (String, Vec<(String, String)>) {
        let url = format!("{base}/v1/namespaces/{ns}/events");
        let mut headers = vec![
            ("ce-specversion".into(), "1.0".into()),
            ("ce-id".into(), next_event_id(sequential)),
            ("ce-source".into(), "/bench".into()),
            ("ce-type".into(), "bench.event".into()),
            ("ce-sentus".into(), now_us().to_string()),
            ("content-type".into(), "application/json".into()),
        ];
        if let Some(key) = next_partition_key(keys) {
            headers.push(("ce-partitionkey".into(), key));
        }
        (url, headers)
    };
    let status_writes = async || {
        let mut sum = 0.0;
        for base in &args.metrics {
            sum += metric(&client, base, "hookline_status_writes_total").await;
        }
        sum
    };
    let stats = || {
        args.pid
            .iter()
            .map(|&pid| proc_stats(pid))
            .fold((0.0_f64, 0.0_f64), |(rss, cpu), (r, c)| (rss.max(r), cpu + c))
    };
    let ingest = args.ingest.clone();
    anyhow::ensure!(!ingest.is_empty(), "--ingest names no Hookline");
    let base_for = move |n: u64| ingest[n as usize % ingest.len()].clone();
    let status_before = status_writes().await;
    let (_, cpu_before) = stats();
    let run_start = Instant::now();
    let mut delivered_total = 0u64;
    let run = |phase| args.phases.contains(&phase);
    let mut result = serde_json::Map::new();
    result.insert("ids".into(), if sequential { "sequential" } else { "uuid" }.into());
    result.insert("partition_keys".into(), keys.into());

    // 1. Direct: the same HTTP stack straight to the receiver; measured again at the end, and the
    // ratios divide by the mean, so that one busy moment on the host cannot make a ratio.
    let mut direct_first = None;
    if run(Phase::Direct) {
        direct_first =
            Some(direct(&client, args.receiver_port, &body, args.concurrency, args.seconds).await?);
        recv.count.store(0, Ordering::Relaxed);
    }
    let publish = |ns: String| {
        let (c, b, base_for) = (client.clone(), body.clone(), base_for.clone());
        move |n: u64| {
            let (url, headers) = ev(&ns, &base_for(n));
            let mut req = c.post(url).body(b.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req
        }
    };
    let mut failures = 0;

    // 2.-4. Saturation through Hookline: single events (fan-out 1), batches of 100 (fan-out 1) and
    // single events into ten subscriptions; delivered events per second until the last arrived.
    let batch: Publisher = {
        let (c, base_for, ns) = (client.clone(), base_for.clone(), args.ns1.clone());
        let item = serde_json::from_str::<Value>(&body)?;
        Box::new(move |n| {
            let base = base_for(n);
            let events: Vec<Value> = (0..100)
                .map(|_| {
                    let mut ev = json!({"specversion": "1.0", "id": next_event_id(sequential), "source": "/bench", "type": "bench.event", "data": item});
                    if let Some(key) = next_partition_key(keys) {
                        ev["partitionkey"] = key.into();
                    }
                    ev
                })
                .collect();
            c.post(format!("{base}/v1/namespaces/{ns}/events"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(Value::Array(events).to_string())
        })
    };
    let saturation: [(Phase, &str, usize, u64, Duration, Publisher); 3] = [
        (
            Phase::Single,
            "single",
            args.concurrency,
            1,
            Duration::from_secs(120),
            Box::new(publish(args.ns1.clone())),
        ),
        (Phase::Batch, "batch", args.concurrency.min(8), 100, Duration::from_secs(180), batch),
        (
            Phase::Fanout10,
            "fanout10",
            args.concurrency,
            10,
            Duration::from_secs(180),
            Box::new(publish(args.ns10.clone())),
        ),
    ];
    for (phase, name, concurrency, each, limit, publisher) in saturation {
        if !run(phase) {
            continue;
        }
        let start = Instant::now();
        let (rate, fail) = saturate(&client, concurrency, args.seconds, publisher).await?;
        let (eps, delivered) = delivered_rate(&recv, start, rate, fail, each, limit).await?;
        result.insert(format!("{name}_eps"), eps.round().into());
        (delivered_total, failures) = (delivered_total + delivered, failures + fail);
    }

    // 5. Latency at a fixed offered load, fan-out 1.
    if run(Phase::Latency) {
        recv.latencies.lock().expect("lock").clear();
        let make = publish(args.ns1.clone());
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let seconds = args.latency_seconds.unwrap_or(args.seconds);
        let total = args.rate * seconds;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        // The host, once a second from the phase's start until its last event is delivered.
        let host = Arc::new(Mutex::new(Vec::new()));
        let sampler = tokio::spawn({
            let host = host.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    host.lock().expect("lock").extend(HostSample::now());
                }
            }
        });
        let mut sends = Vec::with_capacity(total as usize);
        for n in 0..total {
            ticker.tick().await;
            let req = make(n);
            sends.push(tokio::spawn(async move {
                let sent = Instant::now();
                let ok = req.send().await.map(|r| r.status().is_success()).unwrap_or(false);
                (ok, sent.elapsed().as_micros() as u64)
            }));
        }
        let (mut ok, mut answers) = (0, Vec::with_capacity(sends.len()));
        for s in sends {
            let (accepted, took) = s.await.unwrap_or((false, 0));
            ok += u64::from(accepted);
            answers.push(took);
        }
        // How long the publishes themselves took (the store's commit is in them).
        answers.sort_unstable();
        result.insert("publish_p50_ms".into(), percentile(&answers, 0.50).into());
        result.insert("publish_p99_ms".into(), percentile(&answers, 0.99).into());
        drained(&recv, ok, Duration::from_secs(120)).await?;
        delivered_total += ok;
        sampler.abort();
        let host = std::mem::take(&mut *host.lock().expect("lock"));
        if let (Some(first), Some(last)) = (host.first(), host.last()) {
            let phase = last.since(first);
            result.insert("host_busy_pct".into(), phase.busy_pct.round().into());
            result.insert("host_steal_pct".into(), ((phase.steal_pct * 10.0).round() / 10.0).into());
        }
        let events = recv.latencies.lock().expect("lock").clone();
        if let Some(path) = &args.latency_trace {
            std::fs::write(path, latency_trace(&events, &host))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let mut lat: Vec<u64> = events.iter().map(|&(_, took)| took).collect();
        lat.sort_unstable();
        result.insert("p50_ms".into(), percentile(&lat, 0.50).into());
        result.insert("p95_ms".into(), percentile(&lat, 0.95).into());
        result.insert("p99_ms".into(), percentile(&lat, 0.99).into());
        result.insert("latency_samples".into(), lat.len().into());
        result.insert("offered_eps".into(), args.rate.into());
        result.insert("latency_seconds".into(), seconds.into());
    }

    // 6. Fail-over: how long the subscriptions of a replica killed with `kill -9` go without a
    // delivery while events keep coming in through the others.
    if run(Phase::Failover) {
        let victim = args.kill.context("the failover phase needs --kill PID")?;
        let (fail, delivered) = failover(&recv, publish(args.ns10.clone()), args.rate, victim).await?;
        result.extend(fail);
        delivered_total += delivered;
    }

    let (rss_mb, cpu_after) = stats();
    let minutes = run_start.elapsed().as_secs_f64() / 60.0;
    let status_writes = status_writes().await - status_before;
    let cpu_per_1000 = (cpu_after - cpu_before) / delivered_total.max(1) as f64 * 1000.0;
    result.insert("rss_mb".into(), ((rss_mb * 10.0).round() / 10.0).into());
    result.insert("cpu_s_per_1000".into(), ((cpu_per_1000 * 1000.0).round() / 1000.0).into());
    result.insert("status_writes_per_min".into(), ((status_writes / minutes * 10.0).round() / 10.0).into());
    result.insert("delivered".into(), delivered_total.into());
    result.insert("publish_failures".into(), failures.into());
    if let Some(first) = direct_first {
        let last = direct(&client, args.receiver_port, &body, args.concurrency, args.seconds).await?;
        let mean = (first + last) / 2.0;
        result.insert("direct_eps".into(), mean.round().into());
        result.insert("direct_eps_first".into(), first.round().into());
        result.insert("direct_eps_last".into(), last.round().into());
        for name in ["single", "batch"] {
            if let Some(eps) = result.get(&format!("{name}_eps")).and_then(Value::as_f64) {
                result.insert(format!("ratio_{name}"), ((eps / mean * 1000.0).round() / 1000.0).into());
            }
        }
    }
    let result = Value::Object(result);
    println!("{result}");
    Ok(())
}

/// Time the costliest CEL filters the subscription schema and checks allow (1,024 bytes, one
/// level of `all`/`exists`/`exists_one`, no `map`/`filter`), each over the largest event of at
/// most `bytes` bytes on which its cost bound lets it run, and print one JSON line per case: the
/// cost bound, the median and worst of several evaluations, and the result. The event's
/// conversion to CEL values is timed on its own (once per event, whatever the filters).
fn cel_worst_case(bytes: usize) {
    use hookline::api::MAX_CEL_LENGTH;
    use hookline::event::CloudEvent;
    use hookline::policy::filter::{CelEvent, CelFilter, MAX_COST};

    /// `head` + `step` repeated + `tail`, as long as the limit allows.
    fn padded(head: &str, step: &str, tail: &str) -> String {
        let n = (MAX_CEL_LENGTH - head.len() - tail.len()) / step.len();
        format!("{head}{}{tail}", step.repeat(n))
    }
    /// An event whose JSON form is at most `bytes` long, with `data` made by `fill(n)` for the
    /// largest `n` that fits.
    fn event(bytes: usize, fill: &dyn Fn(usize) -> Value) -> CloudEvent {
        let envelope = json!({"specversion": "1.0", "id": "1", "source": "/bench", "type": "t", "subject": "s", "data": null});
        let room = bytes - envelope.to_string().len();
        let (mut lo, mut hi) = (1, room);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fill(mid).to_string().len() <= room { lo = mid } else { hi = mid - 1 }
        }
        let mut e = envelope;
        e["data"] = fill(lo);
        CloudEvent::from_structured(e.to_string().as_bytes()).expect("bench event")
    }
    let ints = |n: usize| json!({"a": vec![1; n]});
    let objects =
        |n: usize| json!({"a": (0..n).map(|i| json!({"k": i % 10, "v": "ab"})).collect::<Vec<_>>()});
    let text = |n: usize| json!({"s": "a".repeat(n)});
    let ors = padded("event.data.a.all(x, ", "x == 1 && ", "true)");
    let regex = padded(r#"event.data.a.exists(x, string(x).matches("^("#, "a|", r#"b)+$"))"#);
    let strings = padded("event.data.a.exists_one(o, ", r#"o.v + "#, r#""" == "z")"#);
    let short = "event.data.a.exists(x, x == 2)".to_string();
    let long_regex = padded(r#"event.data.s.matches("("#, "a|", r#"b)*c")"#);
    let contains = padded("event.data.s.contains(", r#""aaaa" + "#, r#""b")"#);
    let both = |n: usize| json!({"a": vec![1; 1 + n / 64], "b": vec![2; 1 + n / 64], "s": "a".repeat(n)});
    let scan_each = r#"event.data.a.exists(x, event.data.s.contains("b"))"#.to_string();
    let in_each = "event.data.a.exists(x, x in event.data.b)".to_string();
    type Fill<'a> = &'a dyn Fn(usize) -> Value;
    let cases: [(&str, Fill, &str); 8] = [
        ("all over ints, 1 KiB of comparisons per element", &ints, &ors),
        ("exists over ints, a 1 KiB regex per element", &ints, &regex),
        ("exists_one over objects, string concatenation per element", &objects, &strings),
        ("a short exists over ints", &ints, &short),
        ("a 1 KiB regex over one long string", &text, &long_regex),
        ("contains over one long string", &text, &contains),
        ("exists scanning one long string per element", &both, &scan_each),
        ("exists with `in` over another list per element", &both, &in_each),
    ];
    let runs = 7;
    for (case, fill, expr) in cases {
        let filter = CelFilter::compile(expr).unwrap_or_else(|e| panic!("{case}: {e}"));
        // The largest event (at most `bytes`) on which the filter is allowed to run.
        let mut size = bytes;
        let mut ev = event(size, fill);
        while filter.cost_bound(&CelEvent::new(&ev)) > MAX_COST {
            size = size * 9 / 10;
            ev = event(size, fill);
        }
        let mut convert = Vec::new();
        let mut eval = Vec::new();
        let mut result = None;
        for _ in 0..runs {
            let seen = CelEvent::new(&ev);
            let started = Instant::now();
            let _ = seen.event_value();
            convert.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            result = Some(filter.matches(&seen));
            eval.push(started.elapsed().as_secs_f64() * 1e3);
        }
        eval.sort_by(f64::total_cmp);
        convert.sort_by(f64::total_cmp);
        let seen = CelEvent::new(&ev);
        println!(
            "{}",
            json!({"case": case, "event_bytes": ev.to_json_bytes().len(), "widest": seen.measures().0, "longest": seen.measures().1,
                   "expression_bytes": expr.len(), "cost_bound": filter.cost_bound(&seen),
                   "convert_ms": convert[runs / 2], "eval_median_ms": eval[runs / 2], "eval_max_ms": eval[runs - 1],
                   "result": format!("{:?}", result.expect("ran"))})
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{HostSample, latency_trace};

    #[test]
    fn the_latency_trace_summarises_each_second_of_publishing() {
        // (published at, took) in µs: two events in the phase's first second, one in its third.
        let start = 1_000_000_000;
        let events = [(start + 400_000, 12_500), (start, 2_000), (start + 2_100_000, 3_000)];
        // The host sampled at the start of the first and second seconds (not the third's end).
        let sample = |at_us, busy, steal, writes, write_ms| HostSample {
            at_us,
            busy,
            idle: 100,
            steal,
            writes,
            write_ms,
            ..Default::default()
        };
        let host =
            [sample(start + 30_000, 100, 10, 1_000, 5_000), sample(start + 990_000, 250, 20, 2_600, 8_000)];
        let trace = latency_trace(&events, &host);
        let lines: Vec<&str> = trace.lines().collect();
        assert_eq!(
            lines,
            [
                "# started at 1000.000 s after the Unix epoch",
                "second events over_10ms p50_ms p99_ms max_ms max_sent_at_ms \
                 cpu_busy_pct cpu_steal_pct cpu_iowait_pct disk_writes_per_s disk_writes_in_flight",
                // 150 busy and 10 stolen ticks of 160; 1,600 writes and 3 s of writing in 0.96 s.
                "0 2 1 12.50 12.50 12.50 400 94 6 0 1667 3.1",
                "2 1 0 3.00 3.00 3.00 2100 - - - - -",
            ]
        );
        assert_eq!(latency_trace(&[], &host), "", "no events, no trace");
    }

    #[test]
    fn host_samples_count_whole_disks_once() {
        let stat = "cpu  10 1 2 30 4 5 6 7 0 0\ncpu0 5 0 1 15 2 2 3 3 0 0\n";
        let diskstats = "\
             254       0 vda 100 0 800 50 40 3 900 120 0 200 170 0 0 0 0\n\
             254       1 vda1 90 0 700 45 40 3 900 120 0 190 165 0 0 0 0\n\
               7       0 loop0 5 0 10 1 9 0 9 9 0 1 1 0 0 0 0\n";
        let disks = ["vda".to_string(), "loop0".to_string()];
        let sample = HostSample::parse(1, stat, diskstats, &disks).expect("parsed");
        assert_eq!(
            sample,
            HostSample {
                at_us: 1,
                busy: 10 + 1 + 2 + 5 + 6,
                idle: 30,
                iowait: 4,
                steal: 7,
                writes: 40,
                write_ms: 120
            }
        );
        assert_eq!(HostSample::parse(1, "", diskstats, &disks), None, "no cpu line, no sample");
    }
}
