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

mod group;
mod keys;
mod migrations;
mod writes;

use super::records::{self, Records};
use super::rfc3339;
use super::{
    Accepted, Attempt, DeadLetter, EARLIER_LIMIT, Job, JobRef, LogEntry, Millis, NewEvent, PartitionKey,
    QueuedDeadLetter, Replay, ReplayResult, Store, StoreError, Verification,
};
use super::{Dialect, LogQuery, SqlParam};
use group::{Request, Tx, Writes, gather_records, write_loop};
use keys::Keys;
use migrations::MIGRATIONS;
use writes::{FORGET_BODY, accept, prune, replay};

/// SQLite-backed [`Store`] under a data directory.
#[derive(Clone)]
pub struct SqliteStore {
    dir: Arc<Path>,
    writer: mpsc::Sender<Writes>,
    records: Records,
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

/// Apply the migrations not yet applied, each in its own transaction. Foreign keys are off
/// meanwhile, so that a migration can rebuild a table others refer to (SQLite's way to change a
/// constraint); each migration must leave them intact, checked before it commits.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current.max(0) as usize >= MIGRATIONS.len() {
        return Ok(());
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        let broken: Option<String> = tx.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Migration { version: i + 1, table });
        }
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
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
        let started = std::time::Instant::now();
        let keys = Keys::load(&writer)?;
        tracing::info!(
            events = keys.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "dedup keys loaded"
        );
        let reader = open(&path)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("hookline-store".into())
            .spawn(move || write_loop(writer, keys, rx))
            .map_err(|source| StoreError::DataDir { path: path.display().to_string(), source })?;
        let (records, records_rx) = mpsc::unbounded_channel();
        tokio::spawn(gather_records(records_rx, tx.clone()));
        Ok(SqliteStore { dir: data_dir.into(), writer: tx, records, reader: Arc::new(Mutex::new(reader)) })
    }

    /// Run `work` on the writer thread, in the next group commit; resolves once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnMut(&Tx) -> Result<T, rusqlite::Error> + Send + 'static,
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

impl Store for SqliteStore {
    fn accept(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, StoreError>> {
        self.write(move |t| accept(t, &events)).boxed()
    }

    fn pending(&self, sub_uid: &str) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>> {
        let uid = sub_uid.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
                 FROM jobs j JOIN events e ON e.seq = j.event_seq WHERE j.sub_uid = ?1",
            )?;
            let rows = stmt.query_map([uid], job_ref)?;
            rows.collect()
        })
        .boxed()
    }

    fn earlier(
        &self,
        sub_uid: &str,
        lanes: Vec<(Option<PartitionKey>, i64)>,
    ) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>> {
        let uid = sub_uid.to_string();
        self.read(move |c| {
            let mut keyed = c.prepare_cached(EARLIER_OF_KEY)?;
            let mut all = c.prepare_cached(EARLIER)?;
            let mut found = Vec::new();
            for (partition, below) in lanes {
                let rows = match partition {
                    Some(p) => keyed.query_map(params![uid, p.0, below, EARLIER_LIMIT], job_ref)?,
                    None => all.query_map(params![uid, below, EARLIER_LIMIT], job_ref)?,
                };
                for row in rows {
                    found.push(row?);
                }
            }
            Ok(found)
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
        records::record(&self.records, attempt).boxed()
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

    fn deliveries(&self, query: LogQuery) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>> {
        self.read(move |c| {
            let (sql, params) = query.sql(Dialect::Sqlite);
            let params: Vec<rusqlite::types::Value> = params
                .into_iter()
                .map(|p| match p {
                    SqlParam::Text(t) => t.into(),
                    SqlParam::Int(i) => i.into(),
                })
                .collect();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                Ok(LogEntry {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    time: rfc3339(r.get(1)?),
                    event_id: r.get(2)?,
                    event_type: r.get(3)?,
                    attempt: r.get(4)?,
                    status_code: r.get(5)?,
                    duration_ms: r.get::<_, i64>(6)? as u64,
                    error: r.get(7)?,
                    outcome: r.get(8)?,
                    next_retry_at: r.get::<_, Option<i64>>(9)?.map(rfc3339),
                    namespace: r.get(12)?,
                    subscription: r.get(10)?,
                    url: r.get(11)?,
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
            t.prepare_cached(&super::put_verification_sql(Dialect::Sqlite))?
                .execute(params![
                    v.sub_uid,
                    v.url,
                    v.method,
                    v.verified_at,
                    v.token,
                    v.code,
                    v.expires_at,
                    v.attempts,
                    v.next_attempt_at,
                    v.message,
                    v.rate_per_minute,
                    v.revalidate
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

    fn free_bytes(&self, enough: u64) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        async move {
            let stat = rustix::fs::statvfs(&*self.dir).map_err(|e| StoreError::DataDir {
                path: self.dir.display().to_string(),
                source: e.into(),
            })?;
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            if free >= enough {
                return Ok(Some(free));
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
            Ok(Some(free.saturating_add(reusable.max(0) as u64)))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;

/// A lane's earlier jobs (see [`Store::earlier`]): of one `partitionkey`, on `jobs_by_partition`.
pub(super) const EARLIER_OF_KEY: &str = "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
     FROM jobs j JOIN events e ON e.seq = j.event_seq
     WHERE j.sub_uid = ?1 AND j.partition_hash = ?2 AND j.id < ?3 ORDER BY j.id LIMIT ?4";

/// A lane's earlier jobs: all of a subscription's (`Strict`), on `jobs_by_sub`.
pub(super) const EARLIER: &str = "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
     FROM jobs j JOIN events e ON e.seq = j.event_seq
     WHERE j.sub_uid = ?1 AND j.id < ?2 ORDER BY j.id LIMIT ?3";

/// A [`JobRef`] from a row of `due_at_ms, id, accepted_at_ms, partition_hash`.
fn job_ref(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRef> {
    Ok(JobRef {
        due_at: r.get(0)?,
        job_id: r.get(1)?,
        accepted_at: r.get(2)?,
        partition: r.get::<_, Option<i64>>(3)?.map(PartitionKey),
    })
}
