//! Load generator and fast receiver for `hack/bench.sh`: measures a bare HTTP POST (the physical
//! baseline) and Hookline's publish → deliver path on loopback, and prints one JSON line.
//! Bounded in time and count; talks only to loopback. The phases are run from here; the load
//! ([`load`]), the receiver ([`receiver`]), the latency phase ([`latency`]), host counters
//! ([`host`]) and the store-only and CEL measurements ([`store`], [`cel`]) have modules of
//! their own.

mod cel;
mod host;
mod latency;
mod load;
mod receiver;
mod slow;
mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use clap::Parser;
use serde_json::{Value, json};

use host::{metric, proc_stats};
use latency::{Steady, percentile};
use load::{
    Publisher, delivered_rate, direct, failover, next_event_id, next_partition_key, now_us, payload, saturate,
};
use receiver::{Recv, receive};

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
    /// Namespace whose subscription's endpoint never answers (`/hang/…`), for the `neighbour` phase.
    #[arg(long, default_value = "")]
    ns_flood: String,
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
    #[arg(long, value_delimiter = ',', default_value = "direct,single,batch,fanout10,latency200,latency")]
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
    /// Slow clients of the `slow` phase.
    #[arg(long, default_value_t = 3000)]
    slow_clients: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Direct,
    Single,
    Batch,
    Fanout10,
    /// `--rate` events per second (1,000 by default): latency and CPU per delivery at that load.
    Latency,
    /// 200 events per second: CPU per delivery at an ordinary load (keys prefixed `at_200_`).
    Latency200,
    /// `--rate` events per second while `--slow-clients` connections from other addresses try to
    /// hold the ingest port (see `slow`); keys prefixed `slow_`.
    Slow,
    /// 200 events per second into `--ns1` while `--concurrency` publishers flood `--ns-flood`,
    /// whose endpoint never answers: what a noisy neighbour costs (keys prefixed `neighbour_`;
    /// its backlog stays, so it runs last).
    Neighbour,
    /// Publish steadily into `--ns10`, `kill -9` the replica `--kill`, and measure how long each
    /// subscription goes without a delivery.
    Failover,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.cel_worst_case > 0 {
        cel::cel_worst_case(args.cel_worst_case);
        return Ok(());
    }
    if args.store_events > 0 {
        println!("{}", store::store_only(&args).await?);
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
        let (start, cpu_start) = (Instant::now(), stats().1);
        let saturated = saturate(concurrency, args.seconds, publisher).await?;
        let fail = saturated.failures;
        let (eps, delivered) = delivered_rate(&recv, start, saturated.requests, fail, each, limit).await?;
        result.insert(format!("{name}_eps"), eps.round().into());
        result.insert(format!("cpu_s_per_1000_{name}"), per_1000(stats().1 - cpu_start, delivered).into());
        // The publish's own answer time: with a fixed number of publishers it sets the rate.
        result.insert(format!("{name}_publish_p50_ms"), percentile(&saturated.answers_us, 0.50).into());
        result.insert(format!("{name}_publish_p99_ms"), percentile(&saturated.answers_us, 0.99).into());
        (delivered_total, failures) = (delivered_total + delivered, failures + fail);
    }

    // 5. Steady offered loads, fan-out 1: an ordinary 200 events/s, then `--rate` (the latency
    // phase proper, whose keys carry no prefix).
    let seconds = args.latency_seconds.unwrap_or(args.seconds);
    let steady = [
        (Phase::Latency200, 200, "at_200_", None),
        (Phase::Latency, args.rate, "", args.latency_trace.as_deref()),
    ];
    for (phase, rate, prefix, trace) in steady {
        if !run(phase) {
            continue;
        }
        let cpu_start = stats().1;
        let (measured, delivered) =
            latency::phase(&recv, publish(args.ns1.clone()), Steady { rate, seconds, trace }).await?;
        result.extend(measured.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        result.insert(format!("cpu_s_per_1000_at_{rate}"), per_1000(stats().1 - cpu_start, delivered).into());
        delivered_total += delivered;
    }

    // 6. The same steady load while slow clients try to hold the first replica's ingest port.
    if run(Phase::Slow) {
        let target: std::net::SocketAddr = args.ingest[0]
            .trim_start_matches("http://")
            .parse()
            .context("the slow phase needs --ingest as http://IP:PORT")?;
        let stop = tokio_util::sync::CancellationToken::new();
        let slow = slow::Slow::start(target, args.slow_clients, stop.clone());
        // Let them take what they can before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu_start = stats().1;
        let steady = Steady { rate: args.rate, seconds, trace: None };
        let (measured, delivered) = latency::phase(&recv, publish(args.ns1.clone()), steady).await?;
        result.extend(measured.into_iter().map(|(k, v)| (format!("slow_{k}"), v)));
        result.insert("slow_cpu_s_per_1000".into(), per_1000(stats().1 - cpu_start, delivered).into());
        result.insert("slow_rss_mb".into(), ((stats().0 * 10.0).round() / 10.0).into());
        slow.report(&mut result);
        stop.cancel();
        delivered_total += delivered;
    }

    // 7. A noisy neighbour: the ordinary load of one namespace while another publishes as fast
    // as it can to an endpoint that hangs.
    if run(Phase::Neighbour) {
        anyhow::ensure!(!args.ns_flood.is_empty(), "the neighbour phase needs --ns-flood");
        let flood = tokio::spawn(saturate(args.concurrency, seconds, publish(args.ns_flood.clone())));
        let steady = Steady { rate: 200, seconds, trace: None };
        let (measured, delivered) = latency::phase(&recv, publish(args.ns1.clone()), steady).await?;
        let flooded = flood.await??;
        result.extend(measured.into_iter().map(|(k, v)| (format!("neighbour_{k}"), v)));
        result.insert("neighbour_flood_eps".into(), flooded.rate.round().into());
        result.insert("neighbour_flood_refused".into(), flooded.failures.into());
        delivered_total += delivered;
    }

    // 8. Fail-over: how long the subscriptions of a replica killed with `kill -9` go without a
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
    result.insert("rss_mb".into(), ((rss_mb * 10.0).round() / 10.0).into());
    result.insert("cpu_s_per_1000".into(), per_1000(cpu_after - cpu_before, delivered_total).into());
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

/// CPU seconds per 1,000 deliveries, to the millisecond.
fn per_1000(cpu_seconds: f64, delivered: u64) -> f64 {
    (cpu_seconds / delivered.max(1) as f64 * 1_000_000.0).round() / 1000.0
}
