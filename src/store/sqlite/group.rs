//! Group commit: one writer thread runs every write request. Concurrent requests share one
//! transaction and one fsync; attempt records, which are not urgent, are gathered for a few
//! milliseconds first. Each request answers once its group is durable, except a group of lazy
//! requests only (deliveries and retries, see `records::may_commit_lazily`): it commits with
//! `synchronous=NORMAL`, its WAL frames written but not flushed until the next durable commit
//! (or checkpoint) flushes the WAL file.

use std::cell::{RefCell, RefMut};
use std::ops::Deref;
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::keys::Keys;
use super::writes::record;
use crate::store::records::{RecordReply, may_commit_lazily, next_group};
use crate::store::{Attempt, StoreError};

/// Most write requests folded into one transaction.
const MAX_GROUP: usize = 512;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The writer's open transaction as a request sees it: the connection (which it derefs to) and
/// the dedup keys, which change along with the transaction.
pub(super) struct Tx<'a> {
    conn: &'a Connection,
    keys: &'a RefCell<Keys>,
}

impl Tx<'_> {
    pub(super) fn keys(&self) -> RefMut<'_, Keys> {
        self.keys.borrow_mut()
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A write request waiting for the writer thread. Its work borrows the request's data, so it can
/// run again if the group it is in has to be retried with savepoints.
pub(super) trait Write: Send {
    /// Run the work and keep its result; false when it failed.
    fn run(&mut self, tx: &Tx) -> bool;
    /// The work ran but its savepoint could not be released: the request failed.
    fn fail(&mut self, e: rusqlite::Error);
    /// Answer with the last run's result, or with the error of the shared commit.
    fn answer(self: Box<Self>, commit_error: Option<&Arc<rusqlite::Error>>);
    /// Whether the request may be answered before its commit is flushed to disk.
    fn lazy(&self) -> bool;
}

pub(super) struct Request<T, F> {
    work: F,
    result: Option<Result<T, rusqlite::Error>>,
    reply: Reply<T>,
    lazy: bool,
}

impl<T, F> Request<T, F>
where
    T: Send + 'static,
    F: FnMut(&Tx) -> Result<T, rusqlite::Error> + Send + 'static,
{
    /// A request answered once its commit is on disk.
    pub(super) fn boxed(work: F, reply: Reply<T>) -> Box<dyn Write> {
        Box::new(Request { work, result: None, reply, lazy: false })
    }

    /// A request that may be answered once committed, before the commit is flushed.
    pub(super) fn lazy(work: F, reply: Reply<T>) -> Box<dyn Write> {
        Box::new(Request { work, result: None, reply, lazy: true })
    }
}

impl<T, F> Write for Request<T, F>
where
    T: Send,
    F: FnMut(&Tx) -> Result<T, rusqlite::Error> + Send,
{
    fn run(&mut self, tx: &Tx) -> bool {
        let result = (self.work)(tx);
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
            (_, Some(e)) if crate::store::is_full(e) => Err(StoreError::Full),
            (_, Some(e)) => Err(StoreError::Commit(e.clone())),
            (Some(Ok(v)), None) => Ok(v),
            // Unreachable: a commit succeeds only after every request of its group ran.
            (None, None) => Err(StoreError::NotRun),
        };
        let _ = self.reply.send(answer);
    }

    fn lazy(&self) -> bool {
        self.lazy
    }
}

/// What the writer thread receives: one request, or a gathered group of attempt records.
pub(super) type Writes = Vec<Box<dyn Write>>;

/// Hand attempt records to the writer in groups (see `store::records`), each group one write
/// request. Ends when every store handle is gone.
pub(super) async fn gather_records(
    mut rx: mpsc::UnboundedReceiver<(Attempt, RecordReply)>,
    writer: mpsc::Sender<Writes>,
) {
    let request = |(attempt, reply): (Attempt, RecordReply)| {
        let lazy = may_commit_lazily(&attempt.update);
        let work = move |t: &Tx| record(t, &attempt);
        if lazy { Request::lazy(work, reply) } else { Request::boxed(work, reply) }
    };
    while let Some(group) = next_group(&mut rx).await {
        // If the writer is gone, the replies are dropped and each caller sees `Closed`.
        if writer.send(group.into_iter().map(request).collect()).await.is_err() {
            break;
        }
    }
}

/// Take every queued request, run them in one transaction, commit once, then answer all.
pub(super) fn write_loop(mut conn: Connection, keys: Keys, mut rx: mpsc::Receiver<Writes>) {
    let keys = RefCell::new(keys);
    let mut flush = Flush::Full;
    while let Some(mut group) = rx.blocking_recv() {
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => group.extend(more),
                Err(_) => break,
            }
        }
        let wanted = if group.iter().all(|r| r.lazy()) { Flush::Lazy } else { Flush::Full };
        let commit = match flush.set(&conn, wanted) {
            Err(e) if wanted == Flush::Full => Err(e),
            // Still FULL when NORMAL could not be set: the group only waits longer.
            _ => write_group(&mut conn, &keys, &mut group),
        }
        .map_err(Arc::new);
        for request in group {
            request.answer(commit.as_ref().err());
        }
    }
}

/// Whether the connection's commits wait for their flush (`synchronous`; opened as FULL).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    Full,
    Lazy,
}

impl Flush {
    /// Switch the connection to `wanted` if it is not so already. Should switching back to FULL
    /// fail, the caller fails the group rather than commit it without its flush.
    fn set(&mut self, conn: &Connection, wanted: Flush) -> Result<(), rusqlite::Error> {
        if *self != wanted {
            let mode = if wanted == Flush::Full { "FULL" } else { "NORMAL" };
            conn.pragma_update(None, "synchronous", mode)?;
            *self = wanted;
        }
        Ok(())
    }
}

/// Run a group in one transaction and commit it: first all together; if a request fails, again
/// from the start with each request in its own savepoint, so that it fails alone. The dedup keys
/// keep what commits and lose what does not.
pub(super) fn write_group(
    conn: &mut Connection,
    keys: &RefCell<Keys>,
    group: &mut [Box<dyn Write>],
) -> Result<(), rusqlite::Error> {
    let result = run_group(conn, keys, group);
    match &result {
        Ok(()) => keys.borrow_mut().commit(),
        Err(_) => keys.borrow_mut().rollback(),
    }
    result
}

fn run_group(
    conn: &mut Connection,
    keys: &RefCell<Keys>,
    group: &mut [Box<dyn Write>],
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if group.iter_mut().all(|request| request.run(&Tx { conn: &tx, keys })) {
        return tx.commit();
    }
    tx.rollback()?;
    keys.borrow_mut().rollback();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let t = Tx { conn: &tx, keys };
    for request in group.iter_mut() {
        if let Err(e) = in_savepoint(&t, |t| request.run(t)) {
            request.fail(e);
        }
    }
    tx.commit()
}

/// Run `run` inside a savepoint and keep its writes only if it returns true, so that a failing
/// request undoes only its own writes (and dedup keys) and the shared transaction goes on for the
/// others. Errs when the savepoint itself fails.
fn in_savepoint(t: &Tx, run: impl FnOnce(&Tx) -> bool) -> Result<(), rusqlite::Error> {
    let exec = |sql: &str| t.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
    exec("SAVEPOINT request")?;
    let mark = t.keys().mark();
    let kept = run(t);
    // ROLLBACK TO keeps the savepoint open; RELEASE then drops it (now empty).
    let result = if kept {
        exec("RELEASE request")
    } else {
        exec("ROLLBACK TO request").and_then(|()| exec("RELEASE request"))
    };
    if !kept || result.is_err() {
        t.keys().undo_to(mark);
    }
    result
}
