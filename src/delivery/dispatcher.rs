//! One dispatcher per subscription: it keeps the subscription's due jobs in time order and sends
//! them, at most `maxConcurrency` at once and within the rate limit, while the gate is open. What
//! to do next is decided by its [`Queue`]; this loop carries it out and reports the queue's depth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::attempt::{Finished, attempt, expire, read_ahead, unreadable};
use super::queue::{Queue, Start};
use super::{NewJob, Shared};
use crate::registry::ActiveSubscription;
use crate::report::Chain;
use crate::store::{Millis, now_ms};

/// A subscription's dispatcher; see the module docs.
pub struct Dispatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) sub: watch::Receiver<Arc<ActiveSubscription>>,
    pub(super) jobs: mpsc::UnboundedReceiver<NewJob>,
    pub(super) stop: CancellationToken,
}

/// How often jobs held behind a closed gate are checked against their TTL.
const HELD_SWEEP: Duration = Duration::from_secs(15);

impl Dispatcher {
    /// Run until stopped or the subscription goes away; in-flight attempts are awaited.
    pub async fn run(mut self) {
        let first = self.sub.borrow().clone();
        let (uid, ns, name) =
            (first.uid.clone(), first.key.namespace.clone().unwrap_or_default(), first.key.name.clone());
        let Some(mut queue) = self.load(&uid, &name).await else { return };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut sweep = tokio::time::interval(HELD_SWEEP);
        loop {
            let sub = self.sub.borrow().clone();
            let now = now_ms();
            let plan = queue.plan(&sub, now, Instant::now());
            for start in plan.start {
                let (shared, sub, done) = (self.shared.clone(), sub.clone(), done_tx.clone());
                match start {
                    Start::Attempt(job, event) => tokio::spawn(attempt(shared, sub, job, event, done)),
                    Start::Unreadable(job, error) => tokio::spawn(unreadable(shared, sub, job, error, done)),
                };
            }
            if !plan.read.is_empty() {
                tokio::spawn(read_ahead(self.shared.clone(), plan.read, done_tx.clone()));
            }
            let depth = queue.depth() as u64;
            let next_retry = queue.next_retry(now).and_then(time);
            self.shared.board.queue(&uid, &ns, &name, depth, next_retry);
            self.shared.metrics.set_queue_depth(&uid, depth as i64);

            tokio::select! {
                _ = self.stop.cancelled() => break,
                job = self.jobs.recv() => match job {
                    Some(job) => queue.admit(job),
                    None => break,
                },
                changed = self.sub.changed() => if changed.is_err() { break },
                Some(finished) = done_rx.recv() => queue.finished(&sub, finished),
                _ = tokio::time::sleep(plan.wake.unwrap_or_default()), if plan.wake.is_some() => {}
                _ = sweep.tick(), if !queue.is_open(&sub) => {
                    let expired = queue.expired(sub.schedule.event_ttl, now);
                    if !expired.is_empty() {
                        tokio::spawn(expire(self.shared.clone(), sub, expired, done_tx.clone()));
                    }
                }
            }
        }
        // Let in-flight attempts finish and record their outcome; what is queued stays in the store.
        drop(done_tx);
        let sub = self.sub.borrow().clone();
        while queue.outstanding() > 0 {
            match done_rx.recv().await {
                Some(finished) => queue.finished(&sub, finished),
                None => break,
            }
        }
        self.shared.metrics.forget_queue(&uid);
        debug!(subscription = %name, "dispatcher stopped");
    }

    /// The queue of the jobs the store holds for this subscription, read until it succeeds or
    /// the dispatcher is stopped.
    async fn load(&self, uid: &str, name: &str) -> Option<Queue> {
        loop {
            match self.shared.store.pending(uid).await {
                Ok(jobs) => {
                    debug!(subscription = %name, queued = jobs.len(), "dispatcher started");
                    return Some(Queue::new(jobs, self.shared.budget.account(), Instant::now()));
                }
                Err(e) => {
                    self.shared.metrics.store_failed(e.metric_label());
                    warn!(subscription = %name, error = %Chain(&e), "loading queued jobs; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

fn time(ms: Millis) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}
