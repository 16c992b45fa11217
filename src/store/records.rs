//! Attempt records on their way to a store's writer. They are not urgent (the HTTP answer is in;
//! only the bookkeeping waits), so both stores gather them for up to [`RECORD_DELAY`], or until
//! [`MAX_RECORDS`] wait, and write each group in one transaction: one commit for hundreds of
//! attempts instead of one each, which the commit cost (every dirty page written to the WAL, then
//! an fsync) made the largest item in the delivery profile. A group of deliveries and retries
//! does not wait for its own flush either ([`may_commit_lazily`]).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Attempt, JobUpdate, StoreError};

/// How long the first record of a group waits for others. Only bookkeeping waits on a record
/// (the job leaving memory, the status counters): the concurrency slot, the circuit breaker and
/// ordered lanes move on the HTTP answer. So at ordinary rates a group gathers a few dozen: at
/// 200 events/s, 25 ms rather than 5 ms took a sixth off the CPU per delivery (BENCHMARKS.md,
/// "CPU per delivery at ordinary rates").
const RECORD_DELAY: Duration = Duration::from_millis(25);
/// Most attempt records in one group.
const MAX_RECORDS: usize = 512;

/// Where a record's outcome goes back to.
pub(super) type RecordReply = oneshot::Sender<Result<(), StoreError>>;

/// The queue of records waiting for a store's writer.
pub(super) type Records = mpsc::UnboundedSender<(Attempt, RecordReply)>;

/// Queue `attempt` and wait until its group is written.
pub(super) async fn record(records: &Records, attempt: Attempt) -> Result<(), StoreError> {
    let (reply, rx) = oneshot::channel();
    records.send((attempt, reply)).map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// The next group: whatever arrives within [`RECORD_DELAY`] of its first record, up to
/// [`MAX_RECORDS`]. `None` once every store handle is gone.
pub(super) async fn next_group(
    rx: &mut mpsc::UnboundedReceiver<(Attempt, RecordReply)>,
) -> Option<Vec<(Attempt, RecordReply)>> {
    let mut group = vec![rx.recv().await?];
    let due = tokio::time::Instant::now() + RECORD_DELAY;
    while group.len() < MAX_RECORDS {
        match tokio::time::timeout_at(due, rx.recv()).await {
            Ok(Some(record)) => group.push(record),
            Ok(None) | Err(_) => break,
        }
    }
    Some(group)
}

/// Whether a record of `update` may commit without waiting for its flush to disk (SQLite's
/// `synchronous=NORMAL`, PostgreSQL's `synchronous_commit = off`; the next publish's flush takes
/// it along). Losing it to a crash of the machine or the database server repeats only what
/// at-least-once delivery allows: a delivery sent again, with the same `webhook-id`, or a retry
/// made sooner. Dead letters and drops end their jobs for good (a FailedEvent, a count) and wait
/// for the flush, as publishes and claims do.
pub(super) fn may_commit_lazily(update: &JobUpdate) -> bool {
    matches!(update, JobUpdate::Delivered | JobUpdate::Retry { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeadLetter;

    #[test]
    fn only_deliveries_and_retries_commit_lazily() {
        let letter = JobUpdate::DeadLetter(DeadLetter {
            namespace: "shop".into(),
            subscription: "orders".into(),
            failure: "{}".into(),
        });
        assert!(may_commit_lazily(&JobUpdate::Delivered));
        assert!(may_commit_lazily(&JobUpdate::Retry { due_at: 1 }));
        assert!(!may_commit_lazily(&letter), "a dead letter waits for the flush");
        assert!(!may_commit_lazily(&JobUpdate::Dropped), "a drop waits for the flush");
    }
}
