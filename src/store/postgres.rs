//! The PostgreSQL store: a pool of connections; each write is one transaction that returns once
//! its `COMMIT` is durable (`synchronous_commit = on`). Concurrent publishes share a transaction,
//! and so do attempt records (`groups`), as in the SQLite store. The tables live in the schema `hookline` of the database the URL names.
//!
//! Over 400 lines on purpose: most of it is the one `impl Store` block, the PostgreSQL half of
//! the store's contract, a method per trait method; the statements themselves are in `writes`,
//! `groups` and `members`.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts, Transaction};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

mod groups;
mod members;
mod migrations;
mod tls;
mod writes;

pub use members::{Claim, Listener, Member, Notice};
pub use tls::with_ca_file;

use super::records::{self, Records};
use super::rfc3339;
use super::{
    Accepted, Attempt, DeadLetter, EARLIER_LIMIT, Job, JobRef, LogEntry, Millis, NewEvent, PartitionKey,
    QueuedDeadLetter, Replay, ReplayResult, Store, StoreError, Verification,
};
use super::{Dialect, LogQuery, SqlParam};
use migrations::{MIGRATION_LOCK, MIGRATIONS};

/// How long a request waits for a connection, and a new connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL-backed [`Store`], which several replicas can share.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// How to connect, for connections outside the pool (the listener).
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    records: Records,
    /// Publishes on their way to a publish writer (see `groups`).
    publishes: mpsc::UnboundedSender<groups::Publish>,
}

/// Where a connection goes, for messages: host, port, database and user, never the password.
fn target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "{}/{} as {}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default database)"),
        config.get_user().unwrap_or("(default user)")
    )
}

impl PostgresStore {
    /// Connect to the database `url` names with at most `pool_size` connections, and bring its
    /// schema up to date. `application_name` shows in `pg_stat_activity`. Must be called within
    /// a Tokio runtime. Errors name the server, never the password.
    pub async fn connect(
        url: &str,
        pool_size: usize,
        application_name: &str,
    ) -> Result<PostgresStore, StoreError> {
        let (mut config, tls) = tls::parse(url)?;
        let options = format!(
            "{} -c synchronous_commit=on -c search_path=hookline",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // A server that vanished without closing the connection is noticed within a minute.
        config.keepalives_idle(Duration::from_secs(30));
        let target = target(&config);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(CONNECT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .build()
            .map_err(|e| StoreError::Connect {
                target: target.clone(),
                source: Box::new(StoreError::PoolBuild(e)),
            })?;
        let connect_error =
            |e: StoreError| StoreError::Connect { target: target.clone(), source: Box::new(e) };
        let mut client = pool.get().await.map_err(|e| connect_error(e.into()))?;
        migrate(&mut client).await.map_err(|e| connect_error(e.into()))?;
        drop(client);
        let (records, records_rx) = mpsc::unbounded_channel();
        tokio::spawn(groups::write_records(pool.clone(), records_rx));
        let publishes = groups::start_publish_writers(&pool);
        Ok(PostgresStore { pool, config, tls, records, publishes })
    }

    /// Run `work` on `data` in a transaction and commit it.
    async fn write<D, T, F>(&self, data: &D, work: F) -> Result<T, StoreError>
    where
        D: Sync + ?Sized,
        F: for<'t, 'c> FnOnce(&'t Transaction<'c>, &'t D) -> BoxFuture<'t, Result<T, tokio_postgres::Error>>,
    {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let value = work(&tx, data).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Run one query and map its rows.
    async fn read<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        map: impl Fn(&Row) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query(&stmt, params).await?.iter().map(map).collect())
    }
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// A statement's parameters in the driver's types.
fn pg_params(params: Vec<SqlParam>) -> Vec<PgParam> {
    params
        .into_iter()
        .map(|p| -> PgParam {
            match p {
                SqlParam::Text(t) => Box::new(t),
                SqlParam::Int(i) => Box::new(i),
            }
        })
        .collect()
}

fn refs(params: &[PgParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

/// Create the schema and apply the migrations it lacks, in one transaction under an advisory
/// lock: replicas starting together take turns, and the second finds nothing left to do.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS hookline;
         CREATE TABLE IF NOT EXISTS hookline.schema_version (version INTEGER NOT NULL)",
    )
    .await?;
    let current: i32 =
        tx.query_one("SELECT COALESCE(max(version), 0) FROM hookline.schema_version", &[]).await?.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO hookline.schema_version (version) VALUES ($1)", &[&(i as i32 + 1)]).await?;
    }
    tx.commit().await
}

/// A [`JobRef`] from a row of `due_at_ms, id, accepted_at_ms, partition_hash`.
fn job_ref(r: &Row) -> JobRef {
    JobRef {
        due_at: r.get(0),
        job_id: r.get(1),
        accepted_at: r.get(2),
        partition: r.get::<_, Option<i64>>(3).map(PartitionKey),
    }
}

impl Store for PostgresStore {
    fn accept(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, StoreError>> {
        async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.publishes.send((events, reply)).map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn pending(&self, sub_uid: &str) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>> {
        let uid = sub_uid.to_string();
        async move {
            self.read(
                "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
                 FROM jobs j JOIN events e ON e.seq = j.event_seq WHERE j.sub_uid = $1",
                &[&uid],
                job_ref,
            )
            .await
        }
        .boxed()
    }

    fn earlier(
        &self,
        sub_uid: &str,
        lanes: Vec<(Option<PartitionKey>, i64)>,
    ) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>> {
        let uid = sub_uid.to_string();
        async move {
            // The lanes of keys in one statement, each on the partition index; the lane of all
            // of a subscription's jobs (`Strict`) on the subscription index.
            let (keyed, all): (Vec<_>, Vec<_>) = lanes.into_iter().partition(|(p, _)| p.is_some());
            let hashes: Vec<i64> = keyed.iter().filter_map(|(p, _)| p.map(|p| p.0)).collect();
            let below: Vec<i64> = keyed.iter().map(|(_, b)| *b).collect();
            let mut found = if keyed.is_empty() {
                Vec::new()
            } else {
                self.read(
                    "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
                     FROM unnest($2::bigint[], $3::bigint[]) AS l (partition_hash, below)
                     CROSS JOIN LATERAL (
                         SELECT * FROM jobs j WHERE j.sub_uid = $1 AND j.partition_hash = l.partition_hash
                             AND j.id < l.below ORDER BY j.id LIMIT $4) j
                     JOIN events e ON e.seq = j.event_seq",
                    &[&uid, &hashes, &below, &EARLIER_LIMIT],
                    job_ref,
                )
                .await?
            };
            for (_, below) in all {
                found.extend(
                    self.read(
                        "SELECT j.due_at_ms, j.id, e.accepted_at_ms, j.partition_hash
                         FROM jobs j JOIN events e ON e.seq = j.event_seq
                         WHERE j.sub_uid = $1 AND j.id < $2 ORDER BY j.id LIMIT $3",
                        &[&uid, &below, &EARLIER_LIMIT],
                        job_ref,
                    )
                    .await?,
                );
            }
            Ok(found)
        }
        .boxed()
    }

    fn jobs(&self, job_ids: Vec<i64>) -> BoxFuture<'_, Result<Vec<Job>, StoreError>> {
        async move {
            // Read while a backlog grows the tables: planned for their current size (see
            // `writes::plan_for_now`).
            let rows = self
                .write(&job_ids, |tx, job_ids| {
                    async move {
                        writes::plan_for_now(tx).await?;
                        let stmt = tx
                            .prepare_cached(
                                "SELECT j.id, j.sub_uid, j.attempts, j.first_attempt_ms, e.accepted_at_ms, e.body, j.replay_of
                                 FROM jobs j JOIN events e ON e.seq = j.event_seq WHERE j.id = ANY($1)",
                            )
                            .await?;
                        tx.query(&stmt, &[job_ids]).await
                    }
                    .boxed()
                })
                .await?;
            let mut found: HashMap<i64, Job> = rows
                .iter()
                .map(|r| Job {
                    job_id: r.get(0),
                    sub_uid: r.get(1),
                    attempts: r.get::<_, i32>(2) as u32,
                    first_attempt_at: r.get(3),
                    accepted_at: r.get(4),
                    event: r.get(5),
                    replay_of: r.get(6),
                })
                .map(|job| (job.job_id, job))
                .collect();
            // In the order asked for, as the SQLite store answers.
            Ok(job_ids.iter().filter_map(|id| found.remove(id)).collect())
        }
        .boxed()
    }

    fn record(&self, attempt: Attempt) -> BoxFuture<'_, Result<(), StoreError>> {
        records::record(&self.records, attempt).boxed()
    }

    fn drop_subscription(&self, sub_uid: &str) -> BoxFuture<'_, Result<u64, StoreError>> {
        let uid = sub_uid.to_string();
        async move {
            self.write(&uid, |tx, uid| {
                async move {
                    tx.execute("DELETE FROM verifications WHERE sub_uid = $1", &[uid]).await?;
                    let seqs: Vec<i64> = tx
                        .query("DELETE FROM jobs WHERE sub_uid = $1 RETURNING event_seq", &[uid])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let dropped = seqs.len() as u64;
                    writes::forget_bodies(tx, seqs).await?;
                    Ok(dropped)
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }

    fn deliveries(&self, query: LogQuery) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>> {
        async move {
            let (sql, params) = query.sql(Dialect::Postgres);
            let params = pg_params(params);
            self.read(&sql, &refs(&params), |r| LogEntry {
                seq: r.get(0),
                at_ms: r.get(1),
                time: rfc3339(r.get(1)),
                event_id: r.get(2),
                event_type: r.get(3),
                attempt: r.get::<_, i32>(4) as u32,
                status_code: r.get::<_, Option<i32>>(5).map(|s| s as u16),
                duration_ms: r.get::<_, i64>(6) as u64,
                error: r.get(7),
                outcome: r.get(8),
                next_retry_at: r.get::<_, Option<i64>>(9).map(rfc3339),
                namespace: r.get(12),
                subscription: r.get(10),
                url: r.get(11),
            })
            .await
        }
        .boxed()
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<QueuedDeadLetter>, StoreError>> {
        async move {
            self.read(
                "SELECT d.job_id, d.sub_uid, d.namespace, d.subscription, d.failure, e.body
                 FROM dead_letters d JOIN events e ON e.seq = d.event_seq ORDER BY d.job_id LIMIT $1",
                &[&i64::from(limit)],
                |r| QueuedDeadLetter {
                    job_id: r.get(0),
                    sub_uid: r.get(1),
                    letter: DeadLetter { namespace: r.get(2), subscription: r.get(3), failure: r.get(4) },
                    event: r.get(5),
                },
            )
            .await
        }
        .boxed()
    }

    fn dead_letter_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.write(&job_id, |tx, job_id| {
                async move {
                    let seqs: Vec<i64> = tx
                        .query("DELETE FROM dead_letters WHERE job_id = $1 RETURNING event_seq", &[job_id])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    writes::forget_bodies(tx, seqs).await
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }

    fn replay(&self, replay: Replay) -> BoxFuture<'_, Result<Option<JobRef>, StoreError>> {
        async move {
            match self.write(&replay, |tx, replay| writes::replay(tx, replay).boxed()).await {
                // A replay of the same FailedEvent committed meanwhile.
                Err(StoreError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
                result => result,
            }
        }
        .boxed()
    }

    fn replay_results(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ReplayResult>, StoreError>> {
        async move {
            self.read(
                "SELECT job_id, replay_of, delivered, attempts, status, error, at_ms FROM replay_outcomes
                 ORDER BY job_id LIMIT $1",
                &[&i64::from(limit)],
                |r| ReplayResult {
                    job_id: r.get(0),
                    replay_of: r.get(1),
                    delivered: r.get(2),
                    attempts: r.get::<_, i32>(3) as u32,
                    status: r.get::<_, Option<i32>>(4).map(|s| s as u16),
                    error: r.get(5),
                    at: r.get(6),
                },
            )
            .await
        }
        .boxed()
    }

    fn replay_result_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.write(&job_id, |tx, job_id| {
                async move {
                    tx.execute("DELETE FROM replay_outcomes WHERE job_id = $1", &[job_id]).await.map(drop)
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }

    fn verification(&self, sub_uid: &str) -> BoxFuture<'_, Result<Option<Verification>, StoreError>> {
        let uid = sub_uid.to_string();
        async move {
            let found = self
                .read(
                    "SELECT sub_uid, url, method, verified_at_ms, token, code, expires_at_ms, attempts,
                       next_attempt_ms, message, rate_per_minute, revalidate FROM verifications WHERE sub_uid = $1",
                    &[&uid],
                    |r| Verification {
                        sub_uid: r.get(0),
                        url: r.get(1),
                        method: r.get(2),
                        verified_at: r.get(3),
                        token: r.get(4),
                        code: r.get(5),
                        expires_at: r.get(6),
                        attempts: r.get::<_, i32>(7) as u32,
                        next_attempt_at: r.get(8),
                        message: r.get(9),
                        rate_per_minute: r.get::<_, Option<i64>>(10).map(|r| r as u32),
                        revalidate: r.get(11),
                    },
                )
                .await?;
            Ok(found.into_iter().next())
        }
        .boxed()
    }

    fn put_verification(&self, v: Verification) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.write(&v, |tx, v| {
                async move {
                    tx.execute(
                        &super::put_verification_sql(Dialect::Postgres),
                        &[
                            &v.sub_uid,
                            &v.url,
                            &v.method,
                            &v.verified_at,
                            &v.token,
                            &v.code,
                            &v.expires_at,
                            &(v.attempts as i32),
                            &v.next_attempt_at,
                            &v.message,
                            &v.rate_per_minute.map(i64::from),
                            &v.revalidate,
                        ],
                    )
                    .await
                    .map(drop)
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }

    fn confirm_validation(
        &self,
        token: &str,
        now: Millis,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let token = token.to_string();
        async move {
            self.write(&(token, now), |tx, (token, now)| {
                async move {
                    let row = tx
                        .query_opt(
                            "UPDATE verifications SET verified_at_ms = $2, token = NULL, code = NULL,
                               expires_at_ms = NULL, message = 'verified: the validation URL was opened'
                             WHERE token = $1 AND expires_at_ms > $2 AND verified_at_ms IS NULL RETURNING sub_uid",
                            &[token, now],
                        )
                        .await?;
                    Ok(row.map(|r| r.get(0)))
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }

    fn prune(
        &self,
        log_before: Millis,
        events_before: Millis,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            self.write(&(), |tx, ()| writes::prune(tx, log_before, events_before, limit).boxed()).await
        }
        .boxed()
    }

    fn free_bytes(&self, _enough: u64) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        async { Ok(None) }.boxed()
    }
}

#[cfg(test)]
mod tests;
