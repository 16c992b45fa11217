//! Load generator and fast receiver for `hack/bench.sh`: measures a bare HTTP POST (the physical
//! baseline) and Hookline's publish → deliver path on loopback, and prints one JSON line.
//! Bounded in time and count; talks only to loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Hookline's ingest base URL.
    #[arg(long, default_value = "")]
    ingest: String,
    /// Hookline's metrics base URL.
    #[arg(long, default_value = "")]
    metrics: String,
    /// Hookline's pid (for RSS and CPU).
    #[arg(long, default_value_t = 0)]
    pid: u32,
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
    /// Only run the receiver (answering handshakes) until interrupted; for `hack/bench.sh --scale`.
    #[arg(long)]
    receive_only: bool,
}

#[derive(Default)]
struct Recv {
    count: AtomicU64,
    /// Publish→receive latencies (µs) of events that carry a publish timestamp.
    latencies: Mutex<Vec<u64>>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn receive(State(r): State<Arc<Recv>>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("ce-type").is_some_and(|t| t == "dev.hookline.subscription.validation") {
        // Answer the ownership handshake synchronously.
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["validationCode"].as_str().map(str::to_string));
        return axum::Json(json!({ "validationResponse": code })).into_response();
    }
    r.count.fetch_add(1, Ordering::Relaxed);
    if let Some(sent) =
        headers.get("ce-sentus").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        r.latencies.lock().expect("lock").push(now_us().saturating_sub(sent));
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let ev = |ns: &str, base: &str, n: u64| -> (String, Vec<(String, String)>) {
        let url = format!("{base}/v1/namespaces/{ns}/events");
        let headers = vec![
            ("ce-specversion".into(), "1.0".into()),
            ("ce-id".into(), format!("e{n}-{}", now_us())),
            ("ce-source".into(), "/bench".into()),
            ("ce-type".into(), "bench.event".into()),
            ("ce-sentus".into(), now_us().to_string()),
            ("content-type".into(), "application/json".into()),
        ];
        (url, headers)
    };
    let status_before = metric(&client, &args.metrics, "hookline_status_writes_total").await;
    let (_, cpu_before) = proc_stats(args.pid);
    let run_start = Instant::now();
    let mut delivered_total = 0u64;

    // 1. Direct: the same HTTP stack straight to the receiver.
    let direct_url = format!("http://127.0.0.1:{}/direct", args.receiver_port);
    let (c, b) = (client.clone(), body.clone());
    let (direct_eps, _) = saturate(&client, args.concurrency, args.seconds, move |n| {
        c.post(&direct_url)
            .header("ce-id", n.to_string())
            .header("content-type", "application/json")
            .body(b.clone())
    })
    .await?;
    recv.count.store(0, Ordering::Relaxed);

    // 2. Single-event ingest, fan-out 1: delivered events per second at saturation.
    let publish = |ns: String| {
        let (c, b, base) = (client.clone(), body.clone(), args.ingest.clone());
        move |n: u64| {
            let (url, headers) = ev(&ns, &base, n);
            let mut req = c.post(url).body(b.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req
        }
    };
    let start = Instant::now();
    let (published, fail1) =
        saturate(&client, args.concurrency, args.seconds, publish(args.ns1.clone())).await?;
    let accepted = (published * start.elapsed().as_secs_f64()).round() as u64;
    let target = accepted.saturating_sub(fail1);
    drained(&recv, target, Duration::from_secs(120)).await?;
    let single_eps = target as f64 / start.elapsed().as_secs_f64();
    delivered_total += target;
    recv.count.store(0, Ordering::Relaxed);

    // 3. Batch ingest (100 per request), fan-out 1.
    let (c, base, ns) = (client.clone(), args.ingest.clone(), args.ns1.clone());
    let item = serde_json::from_str::<Value>(&body)?;
    let start = Instant::now();
    let (batches, failb) = saturate(&client, args.concurrency.min(8), args.seconds, move |n| {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"specversion": "1.0", "id": format!("b{n}-{i}-{}", now_us()), "source": "/bench", "type": "bench.event", "data": item}))
            .collect();
        c.post(format!("{base}/v1/namespaces/{ns}/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string())
    })
    .await?;
    let target = ((batches * start.elapsed().as_secs_f64()).round() as u64).saturating_sub(failb) * 100;
    drained(&recv, target, Duration::from_secs(180)).await?;
    let batch_eps = target as f64 / start.elapsed().as_secs_f64();
    delivered_total += target;
    recv.count.store(0, Ordering::Relaxed);

    // 4. Fan-out 10: single-event ingest into a namespace with ten subscriptions.
    let start = Instant::now();
    let (published, fail10) =
        saturate(&client, args.concurrency, args.seconds, publish(args.ns10.clone())).await?;
    let target = ((published * start.elapsed().as_secs_f64()).round() as u64).saturating_sub(fail10) * 10;
    drained(&recv, target, Duration::from_secs(180)).await?;
    let fanout10_eps = target as f64 / start.elapsed().as_secs_f64();
    delivered_total += target;
    recv.count.store(0, Ordering::Relaxed);
    recv.latencies.lock().expect("lock").clear();

    // 5. Latency at a fixed offered load, fan-out 1.
    let make = publish(args.ns1.clone());
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let total = args.rate * args.seconds;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let req = make(n);
        sends.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().is_success()).unwrap_or(false)
        }));
    }
    let mut ok = 0;
    for s in sends {
        ok += u64::from(s.await.unwrap_or(false));
    }
    drained(&recv, ok, Duration::from_secs(120)).await?;
    delivered_total += ok;
    let mut lat = recv.latencies.lock().expect("lock").clone();
    lat.sort_unstable();

    let (rss_mb, cpu_after) = proc_stats(args.pid);
    let minutes = run_start.elapsed().as_secs_f64() / 60.0;
    let status_writes = metric(&client, &args.metrics, "hookline_status_writes_total").await - status_before;
    let result = json!({
        "direct_eps": direct_eps.round(),
        "single_eps": single_eps.round(),
        "batch_eps": batch_eps.round(),
        "fanout10_eps": fanout10_eps.round(),
        "ratio_single": (single_eps / direct_eps * 1000.0).round() / 1000.0,
        "ratio_batch": (batch_eps / direct_eps * 1000.0).round() / 1000.0,
        "p50_ms": percentile(&lat, 0.50),
        "p95_ms": percentile(&lat, 0.95),
        "p99_ms": percentile(&lat, 0.99),
        "latency_samples": lat.len(),
        "offered_eps": args.rate,
        "rss_mb": (rss_mb * 10.0).round() / 10.0,
        "cpu_s_per_1000": ((cpu_after - cpu_before) / delivered_total.max(1) as f64 * 1000.0 * 1000.0).round() / 1000.0,
        "status_writes_per_min": (status_writes / minutes * 10.0).round() / 10.0,
        "delivered": delivered_total,
        "publish_failures": fail1 + failb + fail10,
    });
    println!("{result}");
    Ok(())
}
