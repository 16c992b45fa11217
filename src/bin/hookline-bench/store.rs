//! `--store-events`: the store alone, without HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use crate::Args;
use crate::host::store_cpu_seconds;
use crate::load::{event_id, payload};

/// The store alone, as ingest and delivery use it at once: 8 publishers accept batches of 100
/// events while each accepted job is recorded as delivered by one of 1,024 concurrent attempts
/// (dispatchers do not wait for their records). Deletes free pages that inserts then reuse, as in
/// a real run; accepting everything first and delivering afterwards would hide that cost.
/// Each kind of id in a new store.
pub async fn store_only(args: &Args) -> anyhow::Result<Value> {
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
pub async fn store_run(
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
