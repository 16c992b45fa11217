//! The SQLite store: one writer thread that group-commits (many concurrent requests share one
//! transaction and one fsync), and a reader connection for queries (WAL lets both run at once).

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::migrations::MIGRATIONS;
use super::{
    Accepted, Attempt, DeadLetter, Job, JobRef, JobUpdate, LogEntry, Millis, NewEvent, QueuedDeadLetter,
    Replay, ReplayResult, Store, StoreError, Verification,
};

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
/// Answers a request once the outcome of the shared commit is known.
type Answer = Box<dyn FnOnce(Option<&rusqlite::Error>)>;

enum Op {
    Accept(Vec<NewEvent>, Reply<Vec<Accepted>>),
    Records(Vec<(Attempt, Reply<()>)>),
    DropSubscription(String, Reply<u64>),
    DeadLetterDone(i64, Reply<()>),
    Prune(Millis, Millis, u32, Reply<u64>),
    Replay(Replay, Reply<Option<JobRef>>),
    PutVerification(Verification, Reply<()>),
    Confirm(String, Millis, Reply<Option<String>>),
    ReplayDone(i64, Reply<()>),
}

/// SQLite-backed [`Store`] under a data directory.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Op>,
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
        Ok(SqliteStore { writer: tx, records, reader: Arc::new(Mutex::new(reader)) })
    }

    async fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
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
async fn gather_records(mut rx: mpsc::UnboundedReceiver<(Attempt, Reply<()>)>, writer: mpsc::Sender<Op>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let due = tokio::time::Instant::now() + RECORD_DELAY;
        while group.len() < MAX_RECORDS {
            match tokio::time::timeout_at(due, rx.recv()).await {
                Ok(Some(record)) => group.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        // If the writer is gone, the replies are dropped and each caller sees `Closed`.
        if writer.send(Op::Records(group)).await.is_err() {
            break;
        }
    }
}

/// Take every queued request, apply them in one transaction, commit once, then answer all.
fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                fail_all(ops, &e);
                continue;
            }
        };
        // Each op runs in a savepoint so one failing request does not undo the others.
        let mut done: Vec<Answer> = Vec::with_capacity(ops.len());
        let mut tx = tx;
        for op in ops {
            apply(&mut tx, op, &mut done);
        }
        let commit = tx.commit();
        for finish in done {
            finish(commit.as_ref().err());
        }
    }
}

fn fail_all(ops: Vec<Op>, e: &rusqlite::Error) {
    let err = || StoreError::Commit(e.to_string());
    for op in ops {
        match op {
            Op::Accept(_, r) => drop(r.send(Err(err()))),
            Op::Records(records) => records.into_iter().for_each(|(_, r)| drop(r.send(Err(err())))),
            Op::DropSubscription(_, r) => drop(r.send(Err(err()))),
            Op::DeadLetterDone(_, r) => drop(r.send(Err(err()))),
            Op::Prune(_, _, _, r) => drop(r.send(Err(err()))),
            Op::Replay(_, r) => drop(r.send(Err(err()))),
            Op::PutVerification(_, r) => drop(r.send(Err(err()))),
            Op::Confirm(_, _, r) => drop(r.send(Err(err()))),
            Op::ReplayDone(_, r) => drop(r.send(Err(err()))),
        }
    }
}

/// Run one op (each record of a group on its own) inside a savepoint; adds to `done` the closures
/// that answer them once the commit is known.
fn apply(tx: &mut Transaction<'_>, op: Op, done: &mut Vec<Answer>) {
    fn run<T: Send + 'static>(
        tx: &mut Transaction<'_>,
        reply: Reply<T>,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Answer {
        let result = in_savepoint(tx, f);
        Box::new(move |commit_error| {
            let answer = match (result, commit_error) {
                (Err(e), _) => Err(StoreError::Sqlite(e)),
                (Ok(_), Some(e)) => Err(StoreError::Commit(e.to_string())),
                (Ok(v), None) => Ok(v),
            };
            let _ = reply.send(answer);
        })
    }
    let answer = match op {
        Op::Accept(events, reply) => run(tx, reply, |t| accept(t, events)),
        Op::Records(records) => {
            for (attempt, reply) in records {
                done.push(run(tx, reply, |t| record(t, attempt)));
            }
            return;
        }
        Op::DropSubscription(uid, reply) => run(tx, reply, |t| {
            t.execute("DELETE FROM verifications WHERE sub_uid = ?1", [&uid])?;
            t.execute("DELETE FROM jobs WHERE sub_uid = ?1", [&uid]).map(|n| n as u64)
        }),
        Op::DeadLetterDone(job_id, reply) => {
            run(tx, reply, |t| t.execute("DELETE FROM dead_letters WHERE job_id = ?1", [job_id]).map(|_| ()))
        }
        Op::Replay(r, reply) => run(tx, reply, |t| replay(t, r)),
        Op::PutVerification(v, reply) => run(tx, reply, |t| {
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
        }),
        Op::Confirm(token, now, reply) => run(tx, reply, |t| {
            t.prepare_cached(
                "UPDATE verifications SET verified_at_ms = ?2, token = NULL, code = NULL, expires_at_ms = NULL,
                   message = 'verified: the validation URL was opened'
                 WHERE token = ?1 AND expires_at_ms > ?2 AND verified_at_ms IS NULL RETURNING sub_uid",
            )?
            .query_row(params![token, now], |r| r.get(0))
            .optional()
        }),
        Op::ReplayDone(job_id, reply) => run(tx, reply, |t| {
            t.execute("DELETE FROM replay_outcomes WHERE job_id = ?1", [job_id]).map(|_| ())
        }),
        Op::Prune(log_before, events_before, limit, reply) => {
            run(tx, reply, |t| prune(t, log_before, events_before, limit))
        }
    };
    done.push(answer);
}

/// Run `f` inside a savepoint, so that a failing request undoes only its own writes and the
/// shared transaction goes on for the others. The statements are cached: this runs per request.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
) -> Result<T, rusqlite::Error> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
    exec("SAVEPOINT request")?;
    let result = f(conn).and_then(|v| exec("RELEASE request").map(|()| v));
    if result.is_err() {
        // ROLLBACK TO keeps the savepoint open; RELEASE then drops it (now empty).
        let _ = exec("ROLLBACK TO request");
        let _ = exec("RELEASE request");
    }
    result
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

fn accept(tx: &Connection, events: Vec<NewEvent>) -> Result<Vec<Accepted>, rusqlite::Error> {
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
        for uid in ev.targets {
            insert_job.execute(params![seq, uid, ev.accepted_at])?;
            jobs.push((uid, tx.last_insert_rowid()));
        }
        out.push(Accepted { duplicate: false, jobs });
    }
    Ok(out)
}

fn replay(tx: &Connection, r: Replay) -> Result<Option<JobRef>, rusqlite::Error> {
    let pending: Option<i64> = tx
        .prepare_cached("SELECT id FROM jobs WHERE replay_of = ?1")?
        .query_row([&r.replay_of], |row| row.get(0))
        .optional()?;
    if pending.is_some() {
        return Ok(None);
    }
    let ev = r.event;
    // The original event row may still exist (within the dedup window): reuse it.
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (namespace, source, event_id) DO UPDATE SET accepted_at_ms = excluded.accepted_at_ms
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

fn record(tx: &Connection, a: Attempt) -> Result<(), rusqlite::Error> {
    let finished = !matches!(a.update, JobUpdate::Retry { .. });
    let delivered = matches!(a.update, JobUpdate::Delivered);
    let replay_of: Option<String> = tx
        .prepare_cached("SELECT replay_of FROM jobs WHERE id = ?1")?
        .query_row([a.job_id], |row| row.get(0))
        .optional()?
        .flatten();
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
    match a.update {
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

fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

impl Store for SqliteStore {
    fn accept(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, StoreError>> {
        self.send(|r| Op::Accept(events, r)).boxed()
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
        self.send(|r| Op::DropSubscription(uid, r)).boxed()
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
        self.send(move |r| Op::DeadLetterDone(job_id, r)).boxed()
    }

    fn replay(&self, replay: Replay) -> BoxFuture<'_, Result<Option<JobRef>, StoreError>> {
        self.send(|r| Op::Replay(replay, r)).boxed()
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
        self.send(move |r| Op::ReplayDone(job_id, r)).boxed()
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
        self.send(|r| Op::PutVerification(v, r)).boxed()
    }

    fn confirm_validation(
        &self,
        token: &str,
        now: Millis,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let token = token.to_string();
        self.send(move |r| Op::Confirm(token, now, r)).boxed()
    }

    fn prune(
        &self,
        log_before: Millis,
        events_before: Millis,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.send(move |r| Op::Prune(log_before, events_before, limit, r)).boxed()
    }
}

#[cfg(test)]
mod tests;
