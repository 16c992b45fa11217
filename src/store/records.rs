//! Attempt records on their way to a store's writer. They are not urgent (the HTTP answer is in;
//! only the bookkeeping waits), so both stores gather them for up to [`RECORD_DELAY`], or until
//! [`MAX_RECORDS`] wait, and write each group in one transaction: one commit for hundreds of
//! attempts instead of one each, which the commit cost (every dirty page written to the WAL, then
//! an fsync) made the largest item in the delivery profile.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Attempt, StoreError};

/// How long the first record of a group waits for others.
const RECORD_DELAY: Duration = Duration::from_millis(5);
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
