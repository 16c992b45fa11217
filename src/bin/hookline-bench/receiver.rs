//! The fast receiver every delivery of a run goes to: it answers the ownership handshake,
//! counts deliveries, and records each one's publish-to-delivery latency.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::load::now_us;

#[derive(Default)]
pub struct Recv {
    pub count: AtomicU64,
    /// When each event that carries a publish timestamp was published (µs since the epoch) and
    /// how long it took to arrive (µs).
    pub latencies: Mutex<Vec<(u64, u64)>>,
    /// The failover phase's record of endpoint paths (`None` in the other phases).
    pub failover: Mutex<Option<Paths>>,
}

/// The endpoint paths that received deliveries before the kill, and when each first received
/// one after it.
#[derive(Default)]
pub struct Paths {
    pub killed: Option<Instant>,
    pub before: HashSet<String>,
    pub first_after: HashMap<String, Instant>,
}

pub async fn receive(State(r): State<Arc<Recv>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("ce-type").is_some_and(|t| t == "dev.hookline.subscription.validation") {
        // Answer the ownership handshake synchronously.
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["validationCode"].as_str().map(str::to_string));
        return axum::Json(json!({ "validationResponse": code })).into_response();
    }
    if uri.path().starts_with("/hang/") {
        // The `neighbour` phase's endpoint, which never answers (Hookline times out); not counted.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::OK.into_response();
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

/// Wait until the receiver has `target` deliveries (or `limit` passes); returns the time it took.
pub async fn drained(r: &Recv, target: u64, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while r.count.load(Ordering::Relaxed) < target {
        if start.elapsed() > limit {
            bail!("only {} of {target} deliveries within {limit:?}", r.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}
