//! One dispatcher per subscription: it keeps the subscription's due jobs in time order and sends
//! them, at most `maxConcurrency` at once and within the rate limit, while the gate is open.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::attempt::{Finished, JobState, LOCAL_RETRY, Loaded, attempt, expire, read_ahead, unreadable};
use super::{NewJob, Shared};
use crate::event::CloudEvent;
use crate::registry::{ActiveSubscription, Gate};
use crate::store::{JobRef, Millis, now_ms};

/// Spaces sends at least `1/rate` apart.
struct RateLimiter {
    next: Instant,
}

impl RateLimiter {
    /// `Ok` when a send may go now; otherwise how long to wait. `spacing` is the least time
    /// between two sends (none: unlimited).
    fn take(&mut self, spacing: Option<Duration>) -> Result<(), Duration> {
        let Some(spacing) = spacing else { return Ok(()) };
        let now = Instant::now();
        if now < self.next {
            return Err(self.next - now);
        }
        self.next = now + spacing;
        Ok(())
    }
}

/// The least time between two sends: the stricter of `rateLimitPerSecond` and the rate the
/// endpoint allowed in an Options handshake.
fn spacing(sub: &ActiveSubscription) -> Option<Duration> {
    let from_spec =
        sub.spec.delivery.rate_limit_per_second.filter(|r| *r > 0).map(|r| Duration::from_secs(1) / r);
    let from_endpoint = sub.rate_per_minute.filter(|r| *r > 0).map(|r| Duration::from_secs(60) / r);
    from_spec.max(from_endpoint)
}

/// A subscription's dispatcher; see the module docs.
pub struct Dispatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) sub: watch::Receiver<Arc<ActiveSubscription>>,
    pub(super) jobs: mpsc::UnboundedReceiver<NewJob>,
    pub(super) stop: CancellationToken,
}

/// Events of fresh jobs kept in memory at most (beyond that, attempts read them from the store).
const MAX_CACHED_EVENTS: usize = 10_000;

/// Jobs read back from the store in one read. While the previous read came back full, the next
/// starts as soon as fewer than this many are waiting in memory, so a backlog in the store is
/// read in large batches ahead of its attempts instead of one read per freed concurrency slot.
const READ_AHEAD: usize = 256;

/// How often jobs held behind a closed gate are checked against their TTL.
const HELD_SWEEP: Duration = Duration::from_secs(15);

impl Dispatcher {
    /// Run until stopped or the subscription goes away; in-flight attempts are awaited.
    pub async fn run(mut self) {
        let first = self.sub.borrow().clone();
        let (uid, ns, name) =
            (first.uid.clone(), first.key.namespace.clone().unwrap_or_default(), first.key.name.clone());
        let mut queue = BTreeSet::new();
        // Events of queued jobs in memory: fresh ones as published, others read ahead.
        let mut events: HashMap<i64, Arc<CloudEvent>> = HashMap::new();
        let mut loaded: HashMap<i64, Loaded> = HashMap::new();
        let (mut reading, mut more_to_read) = (false, false);
        // Attempts hold a concurrency slot while their request is out (`in_flight`) and count as
        // outstanding until their outcome is recorded (`outstanding`).
        let mut outstanding = 0usize;
        loop {
            match self.shared.store.pending(&uid).await {
                Ok(jobs) => {
                    queue.extend(jobs);
                    break;
                }
                Err(e) => {
                    warn!(subscription = %name, error = %e, "loading queued jobs; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        debug!(subscription = %name, queued = queue.len(), "dispatcher started");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut in_flight = 0usize;
        let mut gone_generation: Option<i64> = None;
        let mut limiter = RateLimiter { next: Instant::now() };
        let mut sweep = tokio::time::interval(HELD_SWEEP);
        loop {
            let sub = self.sub.borrow().clone();
            let open = sub.gate == Gate::Open && gone_generation.is_none_or(|g| g < sub.generation);
            let now = now_ms();
            let mut wake: Option<Duration> = None;
            let mut head_unread = false;
            while open && in_flight < sub.spec.delivery.max_concurrency as usize {
                let Some(&head) = queue.first() else { break };
                if head.due_at > now {
                    wake = Some(Duration::from_millis((head.due_at - now) as u64));
                    break;
                }
                if !events.contains_key(&head.job_id) && !loaded.contains_key(&head.job_id) {
                    // Its event is on its way from the store, or a read starts below.
                    head_unread = true;
                    break;
                }
                if let Err(wait) = limiter.take(spacing(&sub)) {
                    wake = Some(wait);
                    break;
                }
                queue.pop_first();
                in_flight += 1;
                outstanding += 1;
                let (shared, sub, done) = (self.shared.clone(), sub.clone(), done_tx.clone());
                if let Some(event) = events.remove(&head.job_id) {
                    tokio::spawn(attempt(shared, sub, JobState::fresh(head), event, done));
                } else if let Some(job) = loaded.remove(&head.job_id) {
                    let state = JobState::loaded(head, &job);
                    match job.event {
                        Ok(event) => tokio::spawn(attempt(shared, sub, state, event, done)),
                        Err(e) => tokio::spawn(unreadable(shared, sub, state, e, done)),
                    };
                }
            }
            if open && !reading && (head_unread || (more_to_read && loaded.len() < READ_AHEAD)) {
                let unread: Vec<JobRef> = queue
                    .iter()
                    .take_while(|j| j.due_at <= now)
                    .filter(|j| !events.contains_key(&j.job_id) && !loaded.contains_key(&j.job_id))
                    .take(READ_AHEAD)
                    .copied()
                    .collect();
                more_to_read = unread.len() == READ_AHEAD;
                if !unread.is_empty() {
                    reading = true;
                    tokio::spawn(read_ahead(self.shared.clone(), unread, done_tx.clone()));
                }
            }
            let next_retry = queue.first().filter(|j| j.due_at > now).and_then(|j| time(j.due_at));
            self.shared.board.queue(&uid, &ns, &name, (queue.len() + in_flight) as u64, next_retry);
            self.shared.metrics.set_queue_depth(&uid, (queue.len() + in_flight) as i64);

            tokio::select! {
                _ = self.stop.cancelled() => break,
                job = self.jobs.recv() => match job {
                    Some(NewJob { job, event }) => {
                        if let Some(event) = event.filter(|_| events.len() < MAX_CACHED_EVENTS) {
                            events.insert(job.job_id, event);
                        }
                        queue.insert(job);
                    }
                    None => break,
                },
                changed = self.sub.changed() => if changed.is_err() { break },
                Some(finished) = done_rx.recv() => match finished {
                    Finished::Sent => in_flight -= 1,
                    Finished::Done => outstanding -= 1,
                    Finished::Requeue(job) => {
                        outstanding -= 1;
                        queue.insert(job);
                    }
                    Finished::Gone(generation) => {
                        outstanding -= 1;
                        gone_generation = Some(generation);
                    }
                    Finished::Read(asked, found) => {
                        reading = false;
                        read_back(&name, &mut queue, &mut loaded, asked, found);
                    }
                },
                _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => {}
                _ = sweep.tick(), if !open => {
                    let ttl = crate::controller::spec_check::retry_schedule(&sub.spec)
                        .map(|s| s.event_ttl.as_millis() as Millis)
                        .unwrap_or(Millis::MAX);
                    let expired: Vec<JobRef> =
                        queue.iter().copied().filter(|j| j.accepted_at.saturating_add(ttl) <= now).collect();
                    for job in expired {
                        queue.remove(&job);
                        events.remove(&job.job_id);
                        loaded.remove(&job.job_id);
                        expire(&self.shared, &sub, job).await;
                    }
                }
            }
        }
        // Let in-flight attempts finish and record their outcome; what is queued stays in the store.
        drop(done_tx);
        while outstanding > 0 {
            match done_rx.recv().await {
                Some(Finished::Sent | Finished::Read(..)) => {}
                Some(_) => outstanding -= 1,
                None => break,
            }
        }
        self.shared.metrics.forget_queue(&uid);
        debug!(subscription = %name, "dispatcher stopped");
    }
}

/// Keep what a read-ahead found for the jobs still queued; drop the jobs the store no longer has
/// (their subscription was dropped meanwhile); if the read failed, try those jobs again later.
fn read_back(
    name: &str,
    queue: &mut BTreeSet<JobRef>,
    loaded: &mut HashMap<i64, Loaded>,
    asked: Vec<JobRef>,
    found: Result<Vec<Loaded>, String>,
) {
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            warn!(subscription = %name, error = %e, jobs = asked.len(), "reading jobs; will retry");
            let later = now_ms() + LOCAL_RETRY.as_millis() as Millis;
            for job in asked {
                if queue.remove(&job) {
                    queue.insert(JobRef { due_at: later, ..job });
                }
            }
            return;
        }
    };
    let mut found: HashMap<i64, Loaded> = found.into_iter().map(|j| (j.job_id, j)).collect();
    for job in asked {
        match found.remove(&job.job_id) {
            // Still queued (the TTL sweep may have taken it meanwhile): keep it for its attempt.
            Some(l) if queue.contains(&job) => {
                loaded.insert(job.job_id, l);
            }
            Some(_) => {}
            None => {
                queue.remove(&job);
            }
        }
    }
}

fn time(ms: Millis) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_spaces_sends() {
        let mut l = RateLimiter { next: Instant::now() };
        assert!(l.take(None).is_ok());
        assert!(l.take(Some(Duration::from_millis(100))).is_ok());
        let wait = l.take(Some(Duration::from_millis(100))).expect_err("too soon");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(50), "{wait:?}");
    }

    fn job(job_id: i64) -> JobRef {
        JobRef { due_at: 1_000, job_id, accepted_at: 1_000 }
    }

    fn loaded(job_id: i64) -> Loaded {
        Loaded {
            job_id,
            attempts: 2,
            first_attempt_at: Some(900),
            event: Err("not parsed in this test".into()),
        }
    }

    #[test]
    fn a_read_ahead_keeps_queued_jobs_and_drops_those_the_store_lost() {
        let mut queue: BTreeSet<JobRef> = [job(1), job(2)].into();
        let mut kept = HashMap::new();
        // Job 3 was taken by the TTL sweep while the read was out; job 2 is gone from the store.
        read_back("s", &mut queue, &mut kept, vec![job(1), job(2), job(3)], Ok(vec![loaded(1), loaded(3)]));
        assert_eq!(queue.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1]);
        assert_eq!(kept.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(kept[&1].attempts, 2, "the stored bookkeeping comes along");
    }

    #[test]
    fn a_failed_read_ahead_retries_its_jobs_later() {
        let mut queue: BTreeSet<JobRef> = [job(1), job(2)].into();
        let mut kept = HashMap::new();
        read_back("s", &mut queue, &mut kept, vec![job(1)], Err("disk I/O error".into()));
        assert!(kept.is_empty());
        let due: Vec<(i64, bool)> = queue.iter().map(|j| (j.job_id, j.due_at > now_ms())).collect();
        assert_eq!(due, [(2, false), (1, true)], "job 1 waits; job 2 was not part of the read");
    }
}
