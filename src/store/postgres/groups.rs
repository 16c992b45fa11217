//! Writes that many callers share: concurrent publishes, and attempt records. On a server each
//! transaction costs round trips and a flushed commit whatever it holds, so requests that arrive
//! together go into one transaction whose statements run over all of their rows at once.
//!
//! - **Publishes** are urgent (a producer waits for its `202`): a few writers each take every
//!   request queued when they become free, so a group forms only while the writers are busy and
//!   a publish on an idle store waits for nothing.
//! - **Attempt records** are not (see `store::records`): one writer gathers them for a few
//!   milliseconds.
//!
//! If a group fails on a statement (one request may be at fault), each request runs again on its
//! own, so that only a faulty one fails; if the server is unreachable, every request of the group
//! gets that error.

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::{members, writes};
use crate::store::records::{self, RecordReply, next_group};
use crate::store::{Accepted, Attempt, Fence, NewEvent, StoreError};

/// Publish transactions in flight at once: enough to keep the server's group commit fed while a
/// transaction waits for its flush, few enough to leave the pool to everything else.
const PUBLISH_WRITERS: usize = 4;
/// Most events in one publish transaction (a batch request above it is a group of its own).
const MAX_GROUP_EVENTS: usize = 2_000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A publish waiting for its group.
pub(super) type Publish = (Vec<NewEvent>, Reply<Vec<Accepted>>);

/// Start the publish writers; publishes sent to the returned queue are accepted in groups.
/// The writers end when every sender is gone.
pub(super) fn start_publish_writers(pool: &Pool) -> mpsc::UnboundedSender<Publish> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..PUBLISH_WRITERS {
        tokio::spawn(write_publishes(pool.clone(), rx.clone()));
    }
    tx
}

async fn write_publishes(pool: Pool, rx: Arc<Mutex<mpsc::UnboundedReceiver<Publish>>>) {
    loop {
        // The lock is held while waiting for a first request, so one idle writer waits and the
        // others queue behind it; it is let go before the group's transaction.
        let group = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut events = first.0.len();
            let mut group = vec![first];
            while events < MAX_GROUP_EVENTS {
                let Ok(publish) = rx.try_recv() else { break };
                events += publish.0.len();
                group.push(publish);
            }
            group
        };
        let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        answer(&pool, &requests, replies, |pool, requests| {
            async move { Ok(accept(pool, requests).await?.into_iter().map(Ok).collect()) }.boxed()
        })
        .await;
    }
}

/// Accept the events of `requests` in one transaction; the outcome of each request by position.
async fn accept(pool: &Pool, requests: &[Vec<NewEvent>]) -> Result<Vec<Vec<Accepted>>, StoreError> {
    let events: Vec<NewEvent> = requests.iter().flatten().cloned().collect();
    let mut accepted = match accept_once(pool, &events).await {
        // Two groups sharing keys in a different order can still deadlock on the unique index;
        // the server then fails one, which is safe to run again.
        Err(StoreError::Postgres(e)) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
            accept_once(pool, &events).await
        }
        result => result,
    }?
    .into_iter();
    Ok(requests.iter().map(|r| accepted.by_ref().take(r.len()).collect()).collect())
}

async fn accept_once(pool: &Pool, events: &[NewEvent]) -> Result<Vec<Accepted>, StoreError> {
    Ok(writes::accept(&pool.get().await?, events).await?)
}

/// Write attempt records in groups (see `store::records`), each in one transaction. Ends when
/// every store handle is gone.
pub(super) async fn write_records(pool: Pool, mut rx: mpsc::UnboundedReceiver<(Attempt, RecordReply)>) {
    while let Some(group) = next_group(&mut rx).await {
        let (attempts, replies): (Vec<Attempt>, Vec<RecordReply>) = group.into_iter().unzip();
        answer(&pool, &attempts, replies, |pool, attempts| {
            async move {
                let recorded = record(pool, attempts).await?;
                Ok(recorded.into_iter().map(|ok| if ok { Ok(()) } else { Err(StoreError::Fenced) }).collect())
            }
            .boxed()
        })
        .await;
    }
}

/// Record the attempts whose claim is current (all those made without one) in one transaction;
/// returns, by position, which were recorded.
async fn record(pool: &Pool, attempts: &[Attempt]) -> Result<Vec<bool>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    writes::plan_for_now(&tx).await?;
    let fences: Vec<(&str, &Fence)> =
        attempts.iter().filter_map(|a| Some((a.sub_uid.as_str(), a.fence.as_ref()?))).collect();
    let current = members::current(&tx, &fences).await?;
    let recorded: Vec<bool> = attempts
        .iter()
        .map(|a| match &a.fence {
            None => true,
            Some(f) => current.contains(&(a.sub_uid.clone(), f.owner.clone(), f.epoch)),
        })
        .collect();
    let valid: Vec<Attempt> =
        attempts.iter().zip(&recorded).filter(|(_, ok)| **ok).map(|(a, _)| a.clone()).collect();
    if !valid.is_empty() {
        if valid.iter().all(|a| records::may_commit_lazily(&a.update)) {
            writes::commit_lazily(&tx).await?;
        }
        writes::record(&tx, &valid).await?;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Run `write` over the whole group (it answers each request by position) and send each request
/// its answer; see the module's comment for what happens when the group fails.
async fn answer<I, O, W>(pool: &Pool, items: &[I], mut replies: Vec<Reply<O>>, write: W)
where
    W: for<'a> Fn(&'a Pool, &'a [I]) -> BoxFuture<'a, Result<Vec<Result<O, StoreError>>, StoreError>>,
{
    match write(pool, items).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) if replies.len() == 1 => {
            let _ = replies.remove(0).send(Err(e));
        }
        Err(e) if retry_alone(&e) => {
            for (item, reply) in items.iter().zip(replies) {
                let outcome = write(pool, std::slice::from_ref(item)).await;
                let _ = reply.send(outcome.and_then(|mut o| o.pop().unwrap_or(Err(StoreError::NotRun))));
            }
        }
        Err(e) => {
            let shared = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(match *shared {
                    // Ingest answers a full disk differently (507): it stays recognisable.
                    StoreError::Full => StoreError::Full,
                    _ => StoreError::Shared(shared.clone()),
                }));
            }
        }
    }
}

/// Whether a failed group is worth running request by request (a statement failed), rather than
/// failing as a whole (no connection).
fn retry_alone(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e) if e.code().is_some())
}
