//! The statements each write request runs, inside the writer's shared transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::group::Tx;
use super::keys::Keys;

use crate::store::{
    Accepted, Attempt, DeadLetter, JobRef, JobUpdate, KEEP_PAYLOAD_UP_TO, Millis, NewEvent, Replay,
};

/// One bounded round of pruning (see [`Store::prune`](crate::store::Store::prune)); every statement runs on an index. The
/// events forgotten leave the dedup keys.
pub(super) fn prune(
    t: &Tx,
    log_before: Millis,
    events_before: Millis,
    limit: u32,
) -> Result<u64, rusqlite::Error> {
    let log = t.prepare_cached(PRUNE_LOG)?.execute(params![log_before, limit])?;
    let mut stmt = t.prepare_cached(PRUNE_EVENTS)?;
    let mut rows = stmt.query(params![events_before, limit])?;
    let mut keys = t.keys();
    let mut events = 0;
    while let Some(r) = rows.next()? {
        let hash = keys.hash(r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?, r.get_ref(3)?.as_str()?);
        keys.remove(hash, r.get(0)?);
        events += 1;
    }
    Ok(log as u64 + events)
}

pub(super) const PRUNE_LOG: &str =
    "DELETE FROM attempts WHERE seq IN (SELECT seq FROM attempts WHERE at_ms < ?1 LIMIT ?2)";
pub(super) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE seq IN (
       SELECT seq FROM events WHERE accepted_at_ms < ?1
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event_seq = events.seq)
         AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_seq = events.seq)
       LIMIT ?2)
     RETURNING seq, namespace, source, event_id";

/// Store each event not stored already (see `keys`) with one job per target.
pub(super) fn accept(tx: &Tx, events: &[NewEvent]) -> Result<Vec<Accepted>, rusqlite::Error> {
    let mut insert_job = tx.prepare_cached(
        "INSERT INTO jobs (event_seq, sub_uid, due_at_ms, partition_hash) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut keys = tx.keys();
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let hash = keys.hash(&ev.namespace, &ev.source, &ev.event_id);
        if keys.find(tx, hash, (&ev.namespace, &ev.source, &ev.event_id))?.is_some() {
            out.push(Accepted { duplicate: true, jobs: vec![] });
            continue;
        }
        let seq = insert_event(tx, &mut keys, hash, ev)?;
        let mut jobs = Vec::with_capacity(ev.targets.len());
        for uid in &ev.targets {
            insert_job.execute(params![seq, uid, ev.accepted_at, ev.partition.map(|p| p.0)])?;
            jobs.push((uid.clone(), tx.last_insert_rowid()));
        }
        out.push(Accepted { duplicate: false, jobs });
    }
    Ok(out)
}

/// Store `ev` as a new row and remember its key; returns the row.
fn insert_event(tx: &Tx, keys: &mut Keys, hash: u64, ev: &NewEvent) -> Result<i64, rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO events (namespace, source, event_id, event_type, accepted_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![ev.namespace, ev.source, ev.event_id, ev.event_type, ev.accepted_at, ev.body])?;
    let seq = tx.last_insert_rowid();
    keys.add(hash, seq);
    Ok(seq)
}

pub(super) fn replay(tx: &Tx, r: &Replay) -> Result<Option<JobRef>, rusqlite::Error> {
    let pending: Option<i64> = tx
        .prepare_cached("SELECT id FROM jobs WHERE replay_of = ?1")?
        .query_row([&r.replay_of], |row| row.get(0))
        .optional()?;
    if pending.is_some() {
        return Ok(None);
    }
    let ev = &r.event;
    // The original event row may still exist (within the dedup window): reuse it.
    let mut keys = tx.keys();
    let hash = keys.hash(&ev.namespace, &ev.source, &ev.event_id);
    let seq = match keys.find(tx, hash, (&ev.namespace, &ev.source, &ev.event_id))? {
        Some(seq) => {
            tx.prepare_cached("UPDATE events SET accepted_at_ms = ?2, body = ?3 WHERE seq = ?1")?
                .execute(params![seq, ev.accepted_at, ev.body])?;
            seq
        }
        None => insert_event(tx, &mut keys, hash, ev)?,
    };
    let uid = ev.targets.first().cloned().unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO jobs (event_seq, sub_uid, due_at_ms, replay_of, partition_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![seq, uid, ev.accepted_at, r.replay_of, ev.partition.map(|p| p.0)])?;
    Ok(Some(JobRef {
        due_at: ev.accepted_at,
        job_id: tx.last_insert_rowid(),
        accepted_at: ev.accepted_at,
        partition: ev.partition,
    }))
}

/// Empty the payload of an event once nothing needs it any more (no job, no queued dead letter):
/// its row stays for deduplication until pruned, its pages are free for new events at once. So
/// the store's disk holds the backlog, not everything accepted within the dedup window. After an
/// attempt this is done only for payloads over [`KEEP_PAYLOAD_UP_TO`].
pub(super) const FORGET_BODY: &str = "UPDATE events SET body = x'' WHERE seq = ?1 AND length(body) > 0
     AND NOT EXISTS (SELECT 1 FROM jobs WHERE event_seq = ?1)
     AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE event_seq = ?1)";

pub(super) fn record(tx: &Connection, a: &Attempt) -> Result<(), rusqlite::Error> {
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
        "INSERT INTO attempts (sub_uid, event_id, event_type, attempt, at_ms, status, duration_ms, error, outcome,
           next_retry_ms, namespace, subscription, url)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
        next_retry,
        a.sent_to.namespace,
        a.sent_to.subscription,
        a.sent_to.url
    ])?;
    Ok(())
}
