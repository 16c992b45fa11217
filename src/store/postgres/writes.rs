//! The statements of each write, inside one transaction. A batch is one statement over arrays
//! (`unnest`), not a statement per row: on a server a round trip costs more than the row.
//!
//! Over 400 lines on purpose: one function per write of the store's contract (accept, record,
//! replay, forget, prune) and the array-building rows they share; each is a few statements that
//! belong together.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Error;
use tokio_postgres::types::ToSql;

use crate::store::{
    Accepted, Attempt, DeadLetter, JobRef, JobUpdate, KEEP_PAYLOAD_UP_TO, Millis, NewEvent, Replay,
};

/// Store `events` and a job per target of each, in one statement: the events' insert feeds the
/// jobs' insert, so a publish is one round trip (see `groups::accept_once` for its transaction).
const ACCEPT: &str = "
    WITH e AS (
        INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[])
        ON CONFLICT DO NOTHING RETURNING seq, namespace, source, event_id),
    j AS (
        INSERT INTO jobs (event_seq, sub_uid, due_at_ms, partition_hash)
        SELECT e.seq, t.sub_uid, t.due_at_ms, t.partition_hash FROM e JOIN
            unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[]) WITH ORDINALITY
            AS t (namespace, source, event_id, sub_uid, due_at_ms, partition_hash, n) USING (namespace, source, event_id)
        ORDER BY t.n
        RETURNING id, event_seq, sub_uid)
    SELECT e.seq, e.namespace, e.source, e.event_id, j.id, j.sub_uid FROM e LEFT JOIN j ON j.event_seq = e.seq";

/// The parameters of [`ACCEPT`]: for `events`, which are distinct and in key order; for their
/// jobs, in the order the events were published, which gives job ids (and so ordered delivery)
/// that order.
struct AcceptColumns<'a> {
    namespaces: Vec<&'a str>,
    sources: Vec<&'a str>,
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    times: Vec<i64>,
    bodies: Vec<&'a [u8]>,
    /// One row per target of each event: its key, the subscription and the job's due time.
    target_keys: [Vec<&'a str>; 3],
    target_subs: Vec<&'a str>,
    target_due: Vec<i64>,
    target_partitions: Vec<Option<i64>>,
}

impl<'a> AcceptColumns<'a> {
    fn new(events: &[&'a NewEvent], published: &[&'a NewEvent]) -> Self {
        let column = |f: fn(&'a NewEvent) -> &'a str| events.iter().map(|e| f(e)).collect::<Vec<_>>();
        let targets = || published.iter().flat_map(|e| e.targets.iter().map(move |t| (*e, t.as_str())));
        let target_column = |f: fn(&'a NewEvent) -> &'a str| targets().map(|(e, _)| f(e)).collect::<Vec<_>>();
        AcceptColumns {
            namespaces: column(|e| &e.namespace),
            sources: column(|e| &e.source),
            ids: column(|e| &e.event_id),
            types: column(|e| &e.event_type),
            times: events.iter().map(|e| e.accepted_at).collect(),
            bodies: events.iter().map(|e| e.body.as_slice()).collect(),
            target_keys: [
                target_column(|e| &e.namespace),
                target_column(|e| &e.source),
                target_column(|e| &e.event_id),
            ],
            target_subs: targets().map(|(_, t)| t).collect(),
            target_due: targets().map(|(e, _)| e.accepted_at).collect(),
            target_partitions: targets().map(|(e, _)| e.partition.map(|p| p.0)).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        let [keys_ns, keys_src, keys_id] = &self.target_keys;
        [
            &self.namespaces,
            &self.sources,
            &self.ids,
            &self.types,
            &self.times,
            &self.bodies,
            keys_ns,
            keys_src,
            keys_id,
            &self.target_subs,
            &self.target_due,
            &self.target_partitions,
        ]
    }
}

/// Accept `events` in one transaction on `client`, which must be idle. BEGIN, the statement and
/// COMMIT go to the server together (pipelined): one round trip, then the commit's flush, which
/// the answer waits for.
pub(super) async fn accept(client: &Client, events: &[NewEvent]) -> Result<Vec<Accepted>, Error> {
    // The first of two events with one key is the one stored; later ones are its duplicates, as
    // with SQLite, so only distinct events go to the server. They go in key order, so that two
    // groups sharing keys lock them in the same order (one waits for the other instead of both
    // deadlocking).
    let mut seen = HashSet::new();
    let published: Vec<&NewEvent> = events.iter().filter(|e| seen.insert(key(e))).collect();
    let mut distinct = published.clone();
    distinct.sort_by(|a, b| key(a).cmp(&key(b)));
    let columns = AcceptColumns::new(&distinct, &published);
    let statement = client.prepare_cached(ACCEPT).await?;
    // Each request is sent when its future is first polled, and `join!` polls them in order. If
    // the statement fails, the server turns the COMMIT into a rollback (and answers it without
    // an error): the statement's error is the one returned. All three are awaited, so the
    // connection goes back to the pool idle.
    let params = columns.params();
    let (begin, rows, commit) = futures::join!(
        client.batch_execute("BEGIN"),
        client.query(&statement, &params),
        client.batch_execute("COMMIT")
    );
    begin?;
    let rows = rows?;
    commit?;

    let mut stored: HashMap<(&str, &str, &str), i64> = HashMap::new();
    let mut jobs: HashMap<(i64, &str), Vec<i64>> = HashMap::new();
    for r in &rows {
        stored.insert((r.get(1), r.get(2), r.get(3)), r.get(0));
        if let Some(id) = r.get::<_, Option<i64>>(4) {
            jobs.entry((r.get(0), r.get(5))).or_default().push(id);
        }
    }
    Ok(events
        .iter()
        .map(|e| match stored.remove(&key(e)) {
            // A duplicate: of a stored event, or of an earlier event of this group.
            None => Accepted { duplicate: true, jobs: vec![] },
            Some(seq) => Accepted {
                duplicate: false,
                jobs: e
                    .targets
                    .iter()
                    .filter_map(|uid| Some((uid.clone(), jobs.get_mut(&(seq, uid.as_str()))?.pop()?)))
                    .collect(),
            },
        })
        .collect())
}

fn key(e: &NewEvent) -> (&str, &str, &str) {
    (&e.namespace, &e.source, &e.event_id)
}

/// Plan the rest of this transaction's statements for their parameters and the tables' current
/// size. A generic plan, once cached, is kept while a table grows: the one made while `jobs` was
/// empty went on scanning the whole table to delete a few hundred rows by id (auto_explain), its
/// per-row array comparison a fifth of the benchmark's CPU (perf). Only the statements that look
/// rows up by id need it; planning every statement (the publish's too) raised the publish p50.
pub(super) async fn plan_for_now(tx: &Transaction<'_>) -> Result<(), Error> {
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan").await
}

/// Commit this transaction without waiting for its WAL to reach the disk (PostgreSQL's
/// `synchronous_commit = off`: flushed by the next flushed commit, such as any publish's, or
/// within 3 × `wal_writer_delay`, 600 ms by default). For records
/// [`may_commit_lazily`](crate::store::records::may_commit_lazily) allows:
/// were the server to crash first, the transaction is lost whole. Publishes then wait on fewer
/// and smaller flushes (BENCHMARKS.md, "PostgreSQL's latency tail at 1,000 events/s").
pub(super) async fn commit_lazily(tx: &Transaction<'_>) -> Result<(), Error> {
    tx.batch_execute("SET LOCAL synchronous_commit = off").await
}

/// Record a batch of attempts: the delivery log, then what each attempt does to its job.
pub(super) async fn record(tx: &Transaction<'_>, attempts: &[Attempt]) -> Result<(), Error> {
    log_attempts(tx, attempts).await?;

    let retries: Vec<_> = attempts
        .iter()
        .filter_map(|a| match a.update {
            JobUpdate::Retry { due_at } => Some((a.job_id, due_at, a.attempt as i32, a.at)),
            _ => None,
        })
        .collect();
    if !retries.is_empty() {
        let update = tx
            .prepare_cached(
                "UPDATE jobs j SET due_at_ms = u.due_at, attempts = u.attempt,
                   first_attempt_ms = COALESCE(j.first_attempt_ms, u.at)
                 FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[]) AS u (id, due_at, attempt, at)
                 WHERE j.id = u.id",
            )
            .await?;
        let (ids, due, attempt, at) = unzip4(retries);
        tx.execute(&update, &[&ids, &due, &attempt, &at]).await?;
    }

    let finished: Vec<&Attempt> =
        attempts.iter().filter(|a| !matches!(a.update, JobUpdate::Retry { .. })).collect();
    if finished.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = finished.iter().map(|a| a.job_id).collect();
    let delete =
        tx.prepare_cached("DELETE FROM jobs WHERE id = ANY($1) RETURNING id, event_seq, replay_of").await?;
    // A job that is gone (its subscription was dropped meanwhile) gets its attempt logged only.
    let gone: HashMap<i64, (i64, Option<String>)> =
        tx.query(&delete, &[&ids]).await?.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();

    let mut letters = DeadLetters::default();
    let mut replays = ReplayOutcomes::default();
    let mut forget = Vec::new();
    for a in finished {
        let Some((event_seq, replay_of)) = gone.get(&a.job_id) else { continue };
        match (&a.update, replay_of) {
            (JobUpdate::DeadLetter(letter), None) => letters.push(a, *event_seq, letter),
            (_, Some(replay_of)) => replays.push(a, replay_of),
            _ => {}
        }
        if a.payload_bytes > KEEP_PAYLOAD_UP_TO {
            forget.push(*event_seq);
        }
    }
    letters.insert(tx).await?;
    replays.insert(tx).await?;
    forget_bodies(tx, forget).await
}

fn unzip4<A, B, C, D>(rows: Vec<(A, B, C, D)>) -> (Vec<A>, Vec<B>, Vec<C>, Vec<D>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, c, d) in rows {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
        out.3.push(d);
    }
    out
}

/// Add attempts to the delivery log, in order (the log pages by its sequence).
async fn log_attempts(tx: &Transaction<'_>, attempts: &[Attempt]) -> Result<(), Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO attempts (sub_uid, event_id, event_type, attempt, at_ms, status, duration_ms, error,
               outcome, next_retry_ms, namespace, subscription, url)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::int[],
               $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::text[])",
        )
        .await?;
    let subs: Vec<&str> = attempts.iter().map(|a| a.sub_uid.as_str()).collect();
    let ids: Vec<&str> = attempts.iter().map(|a| a.event_id.as_str()).collect();
    let types: Vec<&str> = attempts.iter().map(|a| a.event_type.as_str()).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt as i32).collect();
    let at: Vec<i64> = attempts.iter().map(|a| a.at).collect();
    let status: Vec<Option<i32>> = attempts.iter().map(|a| a.status.map(i32::from)).collect();
    let durations: Vec<i64> = attempts.iter().map(|a| a.duration_ms as i64).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let (outcomes, next): (Vec<&str>, Vec<Option<Millis>>) = attempts
        .iter()
        .map(|a| match &a.update {
            JobUpdate::Delivered => ("delivered", None),
            JobUpdate::Retry { due_at } => ("retry", Some(*due_at)),
            JobUpdate::DeadLetter(_) => ("deadLettered", None),
            JobUpdate::Dropped => ("dropped", None),
        })
        .unzip();
    let namespaces: Vec<&str> = attempts.iter().map(|a| a.sent_to.namespace.as_str()).collect();
    let names: Vec<&str> = attempts.iter().map(|a| a.sent_to.subscription.as_str()).collect();
    let urls: Vec<&str> = attempts.iter().map(|a| a.sent_to.url.as_str()).collect();
    tx.execute(
        &insert,
        &[
            &subs,
            &ids,
            &types,
            &numbers,
            &at,
            &status,
            &durations,
            &errors,
            &outcomes,
            &next,
            &namespaces,
            &names,
            &urls,
        ],
    )
    .await?;
    Ok(())
}

/// Dead letters of a batch, as columns.
#[derive(Default)]
struct DeadLetters<'a> {
    jobs: Vec<i64>,
    subs: Vec<&'a str>,
    namespaces: Vec<&'a str>,
    names: Vec<&'a str>,
    events: Vec<i64>,
    failures: Vec<&'a str>,
}

impl<'a> DeadLetters<'a> {
    fn push(&mut self, a: &'a Attempt, event_seq: i64, letter: &'a DeadLetter) {
        self.jobs.push(a.job_id);
        self.subs.push(&a.sub_uid);
        self.namespaces.push(&letter.namespace);
        self.names.push(&letter.subscription);
        self.events.push(event_seq);
        self.failures.push(&letter.failure);
    }

    async fn insert(self, tx: &Transaction<'_>) -> Result<(), Error> {
        if self.jobs.is_empty() {
            return Ok(());
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO dead_letters (job_id, sub_uid, namespace, subscription, event_seq, failure)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&self.jobs, &self.subs, &self.namespaces, &self.names, &self.events, &self.failures];
        tx.execute(&insert, &params).await.map(drop)
    }
}

/// Final outcomes of replays in a batch, as columns.
#[derive(Default)]
struct ReplayOutcomes<'a> {
    jobs: Vec<i64>,
    replay_of: Vec<&'a str>,
    delivered: Vec<bool>,
    attempts: Vec<i32>,
    status: Vec<Option<i32>>,
    errors: Vec<Option<&'a str>>,
    at: Vec<i64>,
}

impl<'a> ReplayOutcomes<'a> {
    fn push(&mut self, a: &'a Attempt, replay_of: &'a str) {
        self.jobs.push(a.job_id);
        self.replay_of.push(replay_of);
        self.delivered.push(matches!(a.update, JobUpdate::Delivered));
        self.attempts.push(a.attempt as i32);
        self.status.push(a.status.map(i32::from));
        self.errors.push(a.error.as_deref());
        self.at.push(a.at);
    }

    async fn insert(self, tx: &Transaction<'_>) -> Result<(), Error> {
        if self.jobs.is_empty() {
            return Ok(());
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO replay_outcomes (job_id, replay_of, delivered, attempts, status, error, at_ms)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::int[], $5::int[], $6::text[],
                   $7::bigint[])
                 ON CONFLICT (job_id) DO UPDATE SET replay_of = excluded.replay_of,
                   delivered = excluded.delivered, attempts = excluded.attempts, status = excluded.status,
                   error = excluded.error, at_ms = excluded.at_ms",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &self.jobs,
            &self.replay_of,
            &self.delivered,
            &self.attempts,
            &self.status,
            &self.errors,
            &self.at,
        ];
        tx.execute(&insert, &params).await.map(drop)
    }
}

/// Empty the payloads of these events where nothing needs them any more (no job, no queued dead
/// letter); their rows stay for deduplication until pruned (see SQLite's `FORGET_BODY`).
///
/// The rows are locked first, in order: a replay re-filling a payload, or another transaction
/// finishing the event's last other job, then either finished before (and the check below sees
/// it, in a fresh snapshot) or waits until this one is done.
pub(super) async fn forget_bodies(tx: &Transaction<'_>, mut seqs: Vec<i64>) -> Result<(), Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    seqs.sort_unstable();
    seqs.dedup();
    let lock =
        tx.prepare_cached("SELECT seq FROM events WHERE seq = ANY($1) ORDER BY seq FOR UPDATE").await?;
    tx.query(&lock, &[&seqs]).await?;
    let forget = tx
        .prepare_cached(
            "UPDATE events e SET body = '\\x' WHERE seq = ANY($1) AND length(body) > 0
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq)
               AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_seq = e.seq)",
        )
        .await?;
    tx.execute(&forget, &[&seqs]).await.map(drop)
}

/// Queue a replay; `None` when one of this FailedEvent is already pending.
pub(super) async fn replay(tx: &Transaction<'_>, r: &Replay) -> Result<Option<JobRef>, Error> {
    let pending = tx.prepare_cached("SELECT id FROM jobs WHERE replay_of = $1").await?;
    if tx.query_opt(&pending, &[&r.replay_of]).await?.is_some() {
        return Ok(None);
    }
    let ev = &r.event;
    // The original event row may still exist (within the dedup window): reuse it.
    let upsert = tx
        .prepare_cached(
            "INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (namespace, source, event_id)
               DO UPDATE SET accepted_at_ms = excluded.accepted_at_ms, body = excluded.body
             RETURNING seq",
        )
        .await?;
    let seq: i64 = tx
        .query_one(
            &upsert,
            &[&ev.namespace, &ev.source, &ev.event_id, &ev.event_type, &ev.accepted_at, &ev.body],
        )
        .await?
        .get(0);
    let uid = ev.targets.first().map(String::as_str).unwrap_or_default();
    let insert = tx
        .prepare_cached(
            "INSERT INTO jobs (event_seq, sub_uid, due_at_ms, replay_of, partition_hash)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .await?;
    let partition = ev.partition.map(|p| p.0);
    let job_id: i64 =
        tx.query_one(&insert, &[&seq, &uid, &ev.accepted_at, &r.replay_of, &partition]).await?.get(0);
    Ok(Some(JobRef { due_at: ev.accepted_at, job_id, accepted_at: ev.accepted_at, partition: ev.partition }))
}

/// One bounded round of pruning (see `Store::prune`); every statement runs on an index. The
/// `ORDER BY` on the time index keeps the planner there: with the statistics of a table that grew
/// since its last analyze, it would otherwise scan the whole table every minute (a third of a
/// second of CPU per 400,000 rows, measured) only to find nothing old enough.
pub(super) async fn prune(
    tx: &Transaction<'_>,
    log_before: Millis,
    events_before: Millis,
    limit: u32,
) -> Result<u64, Error> {
    let log = tx
        .prepare_cached(
            "DELETE FROM attempts WHERE seq IN (SELECT seq FROM attempts WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
        )
        .await?;
    let events = tx
        .prepare_cached(
            "DELETE FROM events WHERE seq IN (
               SELECT seq FROM events e WHERE accepted_at_ms < $1
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq)
                 AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_seq = e.seq)
               ORDER BY accepted_at_ms LIMIT $2)",
        )
        .await?;
    let limit = i64::from(limit);
    Ok(tx.execute(&log, &[&log_before, &limit]).await?
        + tx.execute(&events, &[&events_before, &limit]).await?)
}
