//! The SQLite store: one writer thread that group-commits (many concurrent requests share one
//! transaction and one fsync), and a reader connection for queries (WAL lets both run at once).
//!
//! A group runs without savepoints; only when one of its requests fails is the transaction rolled
//! back and the group run again with a savepoint around each request, so that the failing request
//! fails alone. Savepoints on every request cost a statement pair and a sub-journal copy of each
//! page a request touched first, a sixth of the writer's time in the batch benchmark.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::migrations::MIGRATIONS;
use super::{
    Accepted, Attempt, DeadLetter, Job, JobRef, JobUpdate, LogEntry, Millis, NewEvent, QueuedDeadLetter,
    Replay, ReplayResult, Store, StoreError, Verification,
};

/// Payloads up to this size stay in their event's row after delivery, until the row is pruned:
/// they live in the row's page, so emptying them frees little, and it cost a third more store
/// time per event (measured with `hookline-bench --store-events`).
const KEEP_PAYLOAD_UP_TO: usize = 1024;

/// Most write requests folded into one transaction.
const MAX_GROUP: usize = 512;

/// Attempt records are not urgent (the HTTP answer is in; only the bookkeeping waits), so they are
/// gathered for up to this long, or until [`MAX_RECORDS`] are waiting, and written in one request:
/// one commit for hundreds of attempts instead of one each, which the commit cost (every dirty page
/// written to the WAL, then an fsync) made the largest item in the delivery profile.
const RECORD_DELAY: std::time::Duration = std::time::Duration::from_millis(5);
/// Most attempt records gathered into one write request.
const MAX_RECORDS: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write request waiting for the writer thread. Its work borrows the request's data, so it can
/// run again if the group it is in has to be retried with savepoints.
trait Write: Send {
    /// Run the work and keep its result; false when it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// The work ran but its savepoint could not be released: the request failed.
    fn fail(&mut self, e: rusqlite::Error);
    /// Answer with the last run's result, or with the error of the shared commit.
    fn answer(self: Box<Self>, commit_error: Option<&Arc<rusqlite::Error>>);
}

struct Request<T, F> {
    work: F,
    result: Option<Result<T, rusqlite::Error>>,
    reply: Reply<T>,
}

impl<T, F> Request<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
{
    fn boxed(work: F, reply: Reply<T>) -> Box<dyn Write> {
        Box::new(Request { work, result: None, reply })
    }
}

impl<T, F> Write for Request<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> Result<T, rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, e: rusqlite::Error) {
        self.result = Some(Err(e));
    }

    fn answer(self: Box<Self>, commit_error: Option<&Arc<rusqlite::Error>>) {
        let answer = match (self.result, commit_error) {
            (Some(Err(e)), _) => Err(StoreError::from(e)),
            (_, Some(e)) if super::is_full(e) => Err(StoreError::Full),
            (_, Some(e)) => Err(StoreError::Commit(e.clone())),
            (Some(Ok(v)), None) => Ok(v),
            // Unreachable: a commit succeeds only after every request of its group ran.
            (None, None) => Err(StoreError::NotRun),
        };
        let _ = self.reply.send(answer);
    }
}

/// What the writer thread receives: one request, or a gathered group of attempt records.
type Writes = Vec<Box<dyn Write>>;

/// SQLite-backed [`Store`] under a data directory.
#[derive(Clone)]
pub struct SqliteStore {
    dir: Arc<Path>,
    writer: mpsc::Sender<Writes>,
    records: mpsc::UnboundedSender<(Attempt, Reply<()>)>,
    reader: Arc<Mutex<Connection>>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL + synchronous=FULL: a commit is on disk (fsync) before it returns.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Open (creating and migrating if needed) the store in `data_dir`. Must be called within a
    /// Tokio runtime (attempt records are gathered by a task).
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.display().to_string(), source })?;
        let path = data_dir.join("hookline.db");
        let mut writer = open(&path)?;
        migrate(&mut writer)?;
        let reader = open(&path)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("hookline-store".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|source| StoreError::DataDir { path: path.display().to_string(), source })?;
        let (records, records_rx) = mpsc::unbounded_channel();
        tokio::spawn(gather_records(records_rx, tx.clone()));
        Ok(SqliteStore { dir: data_dir.into(), writer: tx, records, reader: Arc::new(Mutex::new(reader)) })
    }

    /// Run `work` on the writer thread, in the next group commit; resolves once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnMut(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(vec![Request::boxed(work, reply)]).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn).map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Hand attempt records to the writer in groups: whatever arrives within [`RECORD_DELAY`] of the
/// first one, up to [`MAX_RECORDS`]. Ends when every store handle is gone.
async fn gather_records(mut rx: mpsc::UnboundedReceiver<(Attempt, Reply<()>)>, writer: mpsc::Sender<Writes>) {
    let request =
        |(attempt, reply): (Attempt, Reply<()>)| Request::boxed(move |t| record(t, &attempt), reply);
    while let Some(first) = rx.recv().await {
        let mut group = vec![request(first)];
        let due = tokio::time::Instant::now() + RECORD_DELAY;
        while group.len() < MAX_RECORDS {
            match tokio::time::timeout_at(due, rx.recv()).await {
                Ok(Some(record)) => group.push(request(record)),
                Ok(None) | Err(_) => break,
            }
        }
        // If the writer is gone, the replies are dropped and each caller sees `Closed`.
        if writer.send(group).await.is_err() {
            break;
        }
    }
}

/// Take every queued request, run them in one transaction, commit once, then answer all.
fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<Writes>) {
    while let Some(mut group) = rx.blocking_recv() {
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => group.extend(more),
                Err(_) => break,
            }
        }
        let commit = write_group(&mut conn, &mut group).map_err(Arc::new);
        for request in group {
            request.answer(commit.as_ref().err());
        }
    }
}

/// Run a group in one transaction and commit it: first all together; if a request fails, again
/// from the start with each request in its own savepoint, so that it fails alone.
fn write_group(conn: &mut Connection, group: &mut [Box<dyn Write>]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if group.iter_mut().all(|request| request.run(&tx)) {
        return tx.commit();
    }
    tx.rollback()?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for request in group.iter_mut() {
        if let Err(e) = in_savepoint(&tx, |c| request.run(c)) {
            request.fail(e);
        }
    }
    tx.commit()
}

/// Run `run` inside a savepoint and keep its writes only if it returns true, so that a failing
/// request undoes only its own writes and the shared transaction goes on for the others. Errs
/// when the savepoint itself fails.
fn in_savepoint(conn: &Connection, run: impl FnOnce(&Connection) -> bool) -> Result<(), rusqlite::Error> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
    exec("SAVEPOINT request")?;
    if run(conn) {
        return exec("RELEASE request");
    }
    // ROLLBACK TO keeps the savepoint open; RELEASE then drops it (now empty).
    exec("ROLLBACK TO request")?;
    exec("RELEASE request")
}

/// One bounded round of pruning (see [`Store::prune`]); every statement runs on an index.
fn prune(
    t: &Connection,
    log_before: Millis,
    events_before: Millis,
    limit: u32,
) -> Result<u64, rusqlite::Error> {
    let log = t.prepare_cached(PRUNE_LOG)?.execute(params![log_before, limit])?;
    let events = t.prepare_cached(PRUNE_EVENTS)?.execute(params![events_before, limit])?;
    Ok((log + events) as u64)
}

const PRUNE_LOG: &str =
    "DELETE FROM attempts WHERE seq IN (SELECT seq FROM attempts WHERE at_ms < ?1 LIMIT ?2)";
const PRUNE_EVENTS: &str = "DELETE FROM events WHERE seq IN (
       SELECT seq FROM events WHERE accepted_at_ms < ?1
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event_seq = events.seq)
         AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_seq = events.seq)
       LIMIT ?2)";

fn accept(tx: &Connection, events: &[NewEvent]) -> Result<Vec<Accepted>, rusqlite::Error> {
    let mut insert_event = tx.prepare_cached(
        "INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?;
    let mut insert_job =
        tx.prepare_cached("INSERT INTO jobs (event_seq, sub_uid, due_at_ms) VALUES (?1, ?2, ?3)")?;
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let inserted = insert_event.execute(params![
            ev.namespace,
            ev.source,
            ev.event_id,
            ev.event_type,
            ev.accepted_at,
            ev.body
        ])?;
        if inserted == 0 {
            out.push(Accepted { duplicate: true, jobs: vec![] });
            continue;
        }
        let seq = tx.last_insert_rowid();
        let mut jobs = Vec::with_capacity(ev.targets.len());
        for uid in &ev.targets {
            insert_job.execute(params![seq, uid, ev.accepted_at])?;
            jobs.push((uid.clone(), tx.last_insert_rowid()));
        }
        out.push(Accepted { duplicate: false, jobs });
    }
    Ok(out)
}

fn replay(tx: &Connection, r: &Replay) -> Result<Option<JobRef>, rusqlite::Error> {
    let pending: Option<i64> = tx
        .prepare_cached("SELECT id FROM jobs WHERE replay_of = ?1")?
        .query_row([&r.replay_of], |row| row.get(0))
        .optional()?;
    if pending.is_some() {
        return Ok(None);
    }
    let ev = &r.event;
    // The original event row may still exist (within the dedup window): reuse it.
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (namespace, source, event_id)
               DO UPDATE SET accepted_at_ms = excluded.accepted_at_ms, body = excluded.body
             RETURNING seq",
        )?
        .query_row(
            params![ev.namespace, ev.source, ev.event_id, ev.event_type, ev.accepted_at, ev.body],
            |row| row.get(0),
        )?;
    let uid = ev.targets.first().cloned().unwrap_or_default();
    tx.prepare_cached("INSERT INTO jobs (event_seq, sub_uid, due_at_ms, replay_of) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq, uid, ev.accepted_at, r.replay_of])?;
    Ok(Some(JobRef { due_at: ev.accepted_at, job_id: tx.last_insert_rowid(), accepted_at: ev.accepted_at }))
}

/// Empty the payload of an event once nothing needs it any more (no job, no queued dead letter):
/// its row stays for deduplication until pruned, its pages are free for new events at once. So
/// the store's disk holds the backlog, not everything accepted within the dedup window. After an
/// attempt this is done only for payloads over [`KEEP_PAYLOAD_UP_TO`].
const FORGET_BODY: &str = "UPDATE events SET body = x'' WHERE seq = ?1 AND length(body) > 0
     AND NOT EXISTS (SELECT 1 FROM jobs WHERE event_seq = ?1)
     AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE event_seq = ?1)";

fn record(tx: &Connection, a: &Attempt) -> Result<(), rusqlite::Error> {
    let finished = !matches!(a.update, JobUpdate::Retry { .. });
    let delivered = matches!(a.update, JobUpdate::Delivered);
    let Some((replay_of, event_seq)) = tx
        .prepare_cached("SELECT replay_of, event_seq FROM jobs WHERE id = ?1")?
        .query_row([a.job_id], |row| Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?)))
        .optional()?
    else {
        // The job is gone (its subscription was dropped meanwhile): log the attempt only.
        return log_attempt(tx, a);
    };
    log_attempt(tx, a)?;
    match &a.update {
        JobUpdate::Retry { due_at } => {
            tx.prepare_cached(
                "UPDATE jobs SET due_at_ms = ?2, attempts = ?3, first_attempt_ms = COALESCE(first_attempt_ms, ?4)
                 WHERE id = ?1",
            )?
            .execute(params![a.job_id, due_at, a.attempt, a.at])?;
        }
        JobUpdate::DeadLetter(DeadLetter { namespace, subscription, failure }) if replay_of.is_none() => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO dead_letters (job_id, sub_uid, namespace, subscription, event_seq, failure)
                 SELECT id, sub_uid, ?2, ?3, event_seq, ?4 FROM jobs WHERE id = ?1",
            )?
            .execute(params![a.job_id, namespace, subscription, failure])?;
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([a.job_id])?;
        }
        JobUpdate::Delivered | JobUpdate::Dropped | JobUpdate::DeadLetter(_) => {
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([a.job_id])?;
        }
    }
    if finished && a.payload_bytes > KEEP_PAYLOAD_UP_TO {
        tx.prepare_cached(FORGET_BODY)?.execute([event_seq])?;
    }
    // A finished replay: its FailedEvent is deleted (delivered) or updated (failed again).
    if let (Some(replay_of), true) = (replay_of, finished) {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO replay_outcomes (job_id, replay_of, delivered, attempts, status, error, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            a.job_id,
            replay_of,
            delivered,
            a.attempt,
            a.status,
            a.error,
            a.at
        ])?;
    }
    Ok(())
}

/// Add an attempt to the delivery log.
fn log_attempt(tx: &Connection, a: &Attempt) -> Result<(), rusqlite::Error> {
    let (outcome, next_retry) = match &a.update {
        JobUpdate::Delivered => ("delivered", None),
        JobUpdate::Retry { due_at } => ("retry", Some(*due_at)),
        JobUpdate::DeadLetter(_) => ("deadLettered", None),
        JobUpdate::Dropped => ("dropped", None),
    };
    tx.prepare_cached(
        "INSERT INTO attempts (sub_uid, event_id, event_type, attempt, at_ms, status, duration_ms, error, outcome, next_retry_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        a.sub_uid,
        a.event_id,
        a.event_type,
        a.attempt,
        a.at,
        a.status,
        a.duration_ms as i64,
        a.error,
        outcome,
        next_retry
    ])?;
    Ok(())
}

fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

impl Store for SqliteStore {
    fn accept(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, StoreError>> {
        self.write(move |t| accept(t, &events)).boxed()
    }

    fn pending(&self, sub_uid: &str) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>> {
        let uid = sub_uid.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.due_at_ms, j.id, e.accepted_at_ms FROM jobs j JOIN events e ON e.seq = j.event_seq
                 WHERE j.sub_uid = ?1",
            )?;
            let rows = stmt.query_map([uid], |r| {
                Ok(JobRef { due_at: r.get(0)?, job_id: r.get(1)?, accepted_at: r.get(2)? })
            })?;
            rows.collect()
        })
        .boxed()
    }

    fn jobs(&self, job_ids: Vec<i64>) -> BoxFuture<'_, Result<Vec<Job>, StoreError>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.id, j.sub_uid, j.attempts, j.first_attempt_ms, e.accepted_at_ms, e.body, j.replay_of
                 FROM jobs j JOIN events e ON e.seq = j.event_seq WHERE j.id = ?1",
            )?;
            let mut found = Vec::with_capacity(job_ids.len());
            for id in job_ids {
                let job = stmt
                    .query_row([id], |r| {
                        Ok(Job {
                            job_id: r.get(0)?,
                            sub_uid: r.get(1)?,
                            attempts: r.get(2)?,
                            first_attempt_at: r.get(3)?,
                            accepted_at: r.get(4)?,
                            event: r.get(5)?,
                            replay_of: r.get(6)?,
                        })
                    })
                    .optional()?;
                found.extend(job);
            }
            Ok(found)
        })
        .boxed()
    }

    fn record(&self, attempt: Attempt) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let (reply, rx) = oneshot::channel();
            self.records.send((attempt, reply)).map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn drop_subscription(&self, sub_uid: &str) -> BoxFuture<'_, Result<u64, StoreError>> {
        let uid = sub_uid.to_string();
        self.write(move |t| {
            t.execute("DELETE FROM verifications WHERE sub_uid = ?1", [&uid])?;
            // The payloads only this subscription still needed (see FORGET_BODY).
            t.execute(
                "UPDATE events SET body = x'' WHERE length(body) > 0
                   AND seq IN (SELECT event_seq FROM jobs WHERE sub_uid = ?1)
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = events.seq AND j.sub_uid != ?1)
                   AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_seq = events.seq)",
                [&uid],
            )?;
            t.execute("DELETE FROM jobs WHERE sub_uid = ?1", [&uid]).map(|n| n as u64)
        })
        .boxed()
    }

    fn deliveries(
        &self,
        sub_uid: &str,
        limit: u32,
        before: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>> {
        let uid = sub_uid.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at_ms, event_id, event_type, attempt, status, duration_ms, error, outcome, next_retry_ms
                 FROM attempts WHERE sub_uid = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![uid, before.unwrap_or(i64::MAX), limit], |r| {
                Ok(LogEntry {
                    seq: r.get(0)?,
                    time: rfc3339(r.get(1)?),
                    event_id: r.get(2)?,
                    event_type: r.get(3)?,
                    attempt: r.get(4)?,
                    status_code: r.get(5)?,
                    duration_ms: r.get::<_, i64>(6)? as u64,
                    error: r.get(7)?,
                    outcome: r.get(8)?,
                    next_retry_at: r.get::<_, Option<i64>>(9)?.map(rfc3339),
                })
            })?;
            rows.collect()
        })
        .boxed()
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<QueuedDeadLetter>, StoreError>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.job_id, d.sub_uid, d.namespace, d.subscription, d.failure, e.body
                 FROM dead_letters d JOIN events e ON e.seq = d.event_seq ORDER BY d.job_id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(QueuedDeadLetter {
                    job_id: r.get(0)?,
                    sub_uid: r.get(1)?,
                    letter: DeadLetter { namespace: r.get(2)?, subscription: r.get(3)?, failure: r.get(4)? },
                    event: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .boxed()
    }

    fn dead_letter_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(move |t| {
            let seq: Option<i64> = t
                .prepare_cached("DELETE FROM dead_letters WHERE job_id = ?1 RETURNING event_seq")?
                .query_row([job_id], |r| r.get(0))
                .optional()?;
            if let Some(seq) = seq {
                t.prepare_cached(FORGET_BODY)?.execute([seq])?;
            }
            Ok(())
        })
        .boxed()
    }

    fn replay(&self, replay: Replay) -> BoxFuture<'_, Result<Option<JobRef>, StoreError>> {
        self.write(move |t| self::replay(t, &replay)).boxed()
    }

    fn replay_results(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ReplayResult>, StoreError>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT job_id, replay_of, delivered, attempts, status, error, at_ms FROM replay_outcomes
                 ORDER BY job_id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(ReplayResult {
                    job_id: r.get(0)?,
                    replay_of: r.get(1)?,
                    delivered: r.get(2)?,
                    attempts: r.get(3)?,
                    status: r.get(4)?,
                    error: r.get(5)?,
                    at: r.get(6)?,
                })
            })?;
            rows.collect()
        })
        .boxed()
    }

    fn replay_result_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(move |t| t.execute("DELETE FROM replay_outcomes WHERE job_id = ?1", [job_id]).map(|_| ()))
            .boxed()
    }

    fn verification(&self, sub_uid: &str) -> BoxFuture<'_, Result<Option<Verification>, StoreError>> {
        let uid = sub_uid.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT sub_uid, url, method, verified_at_ms, token, code, expires_at_ms, attempts, next_attempt_ms,
                   message, rate_per_minute, revalidate FROM verifications WHERE sub_uid = ?1",
            )?
            .query_row([uid], |r| {
                Ok(Verification {
                    sub_uid: r.get(0)?,
                    url: r.get(1)?,
                    method: r.get(2)?,
                    verified_at: r.get(3)?,
                    token: r.get(4)?,
                    code: r.get(5)?,
                    expires_at: r.get(6)?,
                    attempts: r.get(7)?,
                    next_attempt_at: r.get(8)?,
                    message: r.get(9)?,
                    rate_per_minute: r.get(10)?,
                    revalidate: r.get(11)?,
                })
            })
            .optional()
        })
        .boxed()
    }

    fn put_verification(&self, v: Verification) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(move |t| {
            t.prepare_cached(
                "INSERT OR REPLACE INTO verifications (sub_uid, url, method, verified_at_ms, token, code, expires_at_ms,
                   attempts, next_attempt_ms, message, rate_per_minute, revalidate)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                v.sub_uid, v.url, v.method, v.verified_at, v.token, v.code, v.expires_at, v.attempts,
                v.next_attempt_at, v.message, v.rate_per_minute, v.revalidate
            ])
            .map(|_| ())
        })
        .boxed()
    }

    fn confirm_validation(
        &self,
        token: &str,
        now: Millis,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let token = token.to_string();
        self.write(move |t| {
            t.prepare_cached(
                "UPDATE verifications SET verified_at_ms = ?2, token = NULL, code = NULL, expires_at_ms = NULL,
                   message = 'verified: the validation URL was opened'
                 WHERE token = ?1 AND expires_at_ms > ?2 AND verified_at_ms IS NULL RETURNING sub_uid",
            )?
            .query_row(params![token, now], |r| r.get(0))
            .optional()
        })
        .boxed()
    }

    fn prune(
        &self,
        log_before: Millis,
        events_before: Millis,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.write(move |t| prune(t, log_before, events_before, limit)).boxed()
    }

    fn free_bytes(&self, enough: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let stat = rustix::fs::statvfs(&*self.dir).map_err(|e| StoreError::DataDir {
                path: self.dir.display().to_string(),
                source: e.into(),
            })?;
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            if free >= enough {
                return Ok(free);
            }
            // Short of space: pages freed by delivered events are reused before the file grows.
            let reusable: i64 = self
                .read(|c| {
                    c.query_row(
                        "SELECT f.freelist_count * p.page_size FROM pragma_freelist_count() f, pragma_page_size() p",
                        [],
                        |r| r.get(0),
                    )
                })
                .await?;
            Ok(free.saturating_add(reusable.max(0) as u64))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
