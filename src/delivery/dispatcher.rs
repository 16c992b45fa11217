//! One dispatcher per subscription: it keeps the subscription's due jobs in time order and sends
//! them, at most `maxConcurrency` at once and within the rate limit, while the gate is open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::attempt::{Finished, JobState, LOCAL_RETRY, Loaded, attempt, expire, read_ahead, unreadable};
use super::budget::{Account, footprint};
use super::{NewJob, Shared};
use crate::event::CloudEvent;
use crate::policy::conditions::Gate;
use crate::registry::ActiveSubscription;
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

/// Concurrency slots free for new attempts.
fn free_slots(sub: &ActiveSubscription, in_flight: usize) -> usize {
    (sub.spec.delivery.max_concurrency as usize).saturating_sub(in_flight)
}

/// A subscription's dispatcher; see the module docs.
pub struct Dispatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) sub: watch::Receiver<Arc<ActiveSubscription>>,
    pub(super) jobs: mpsc::UnboundedReceiver<NewJob>,
    pub(super) stop: CancellationToken,
}

/// Most jobs read back from the store in one read. While the previous read came back full, the
/// next starts as soon as the budget has room, so a backlog in the store is read in large batches
/// ahead of its attempts instead of one read per freed concurrency slot.
const READ_AHEAD: usize = 256;

/// Most events one dispatcher caches, however small: finding the unread jobs for a read walks past
/// the cached ones, so a larger cache costs more per read than it saves (without this cap the
/// benchmark's backlog cached ~130,000 small events per subscription and delivered 10–20% less;
/// BENCHMARKS.md change 13).
const MAX_CACHED: usize = 10_000;

/// A first guess at a cached event's footprint, before any was seen: sizes the first read.
const TYPICAL_FOOTPRINT: usize = 4096;

/// A cached event: fresh as published, or read back from the store with the job's bookkeeping.
enum Cached {
    Fresh(Arc<CloudEvent>),
    Loaded(Loaded),
}

/// The events of queued jobs held in memory, within this dispatcher's account of the
/// [`EventBudget`](super::budget::EventBudget). Jobs without a cached event are read from the
/// store when due.
struct Cache {
    /// In the queue's order (due first), so that shedding drops the events needed last.
    entries: BTreeMap<JobRef, (Cached, usize)>,
    /// How many of `entries` were read back from the store.
    loaded: usize,
    account: Account,
    /// Running estimate of one event's footprint, to size reads to the room in the budget.
    typical: usize,
    /// Fresh jobs were queued without their events (no room): later fresh events are not kept
    /// either until the reads have caught up, since those reads would evict them to make room
    /// for the jobs due before them, and they would be read again.
    behind: bool,
}

impl Cache {
    fn new(account: Account) -> Self {
        Cache { entries: BTreeMap::new(), loaded: 0, account, typical: TYPICAL_FOOTPRINT, behind: false }
    }

    fn contains(&self, job: &JobRef) -> bool {
        self.entries.contains_key(job)
    }

    /// Keep the event of a job just published, unless earlier ones had to be left in the store.
    fn offer_fresh(&mut self, job: JobRef, event: Arc<CloudEvent>) {
        if !self.behind && !self.keep(job, Cached::Fresh(event), false) {
            self.behind = true;
        }
    }

    /// Keep `cached` for `job` if the budget allows, making room by dropping the events of jobs
    /// due after it (always, when `forced`: it is attempted next).
    fn keep(&mut self, job: JobRef, cached: Cached, forced: bool) -> bool {
        let (bytes, loaded) = match &cached {
            Cached::Fresh(event) => (footprint(event), 0),
            Cached::Loaded(job) => (job.event.as_deref().map_or(0, footprint), 1),
        };
        self.typical = (self.typical * 7 + bytes) / 8;
        if forced {
            self.account.force(bytes);
        } else {
            while self.entries.len() >= MAX_CACHED || !self.account.try_take(bytes) {
                if self.entries.last_key_value().is_none_or(|(last, _)| *last <= job) {
                    return false;
                }
                self.drop_last();
            }
        }
        self.take(&job);
        self.entries.insert(job, (cached, bytes));
        self.loaded += loaded;
        true
    }

    /// Take the cached event of `job_id` out (for its attempt, or because the job left the queue).
    fn take(&mut self, job: &JobRef) -> Option<Cached> {
        let (cached, bytes) = self.entries.remove(job)?;
        Some(self.forget(cached, bytes))
    }

    /// Drop the cached event of the job due last.
    fn drop_last(&mut self) {
        if let Some((_, (cached, bytes))) = self.entries.pop_last() {
            self.forget(cached, bytes);
        }
    }

    fn forget(&mut self, cached: Cached, bytes: usize) -> Cached {
        self.account.release(bytes);
        if matches!(cached, Cached::Loaded(_)) {
            self.loaded -= 1;
        }
        cached
    }

    /// How many due jobs to read next: what the budget has room for (counting, when the head of
    /// the queue is unread, what is cached behind it, which the read displaces), plus `needed`
    /// that are attempted as soon as they arrive.
    fn read_size(&self, needed: usize, head_unread: bool) -> usize {
        let behind = if head_unread { self.account.held() } else { 0 };
        (needed + (self.account.room() + behind) / self.typical.max(1)).min(READ_AHEAD)
    }

    /// Drop cached events of the jobs due last until this dispatcher is within its share again,
    /// keeping the first `keep_first` (they go out as soon as their slot or rate allows).
    fn shed(&mut self, keep_first: usize) {
        while self.entries.len() > keep_first && self.account.excess() > 0 {
            self.drop_last();
        }
    }
}

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
        let mut cache = Cache::new(self.shared.budget.account());
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
            cache.account.set_active(!queue.is_empty() || in_flight > 0);
            let mut wake: Option<Duration> = None;
            let mut head_unread = false;
            while open && free_slots(&sub, in_flight) > 0 {
                let Some(&head) = queue.first() else { break };
                if head.due_at > now {
                    wake = Some(Duration::from_millis((head.due_at - now) as u64));
                    break;
                }
                if !cache.contains(&head) {
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
                match cache.take(&head) {
                    Some(Cached::Fresh(event)) => {
                        tokio::spawn(attempt(shared, sub, JobState::fresh(head), event, done));
                    }
                    Some(Cached::Loaded(job)) => {
                        let state = JobState::loaded(head, &job);
                        match job.event {
                            Ok(event) => tokio::spawn(attempt(shared, sub, state, event, done)),
                            Err(e) => tokio::spawn(unreadable(shared, sub, state, e, done)),
                        };
                    }
                    None => {}
                }
            }
            let slots = free_slots(&sub, in_flight);
            cache.shed(if open { slots } else { 0 });
            // Read due jobs whose events are not in memory: as many as the budget has room for, and
            // at least those that free concurrency slots would attempt at once.
            if open && !reading && (head_unread || (more_to_read && cache.loaded < READ_AHEAD)) {
                let size = cache.read_size(if head_unread { slots.max(1) } else { 0 }, head_unread);
                let unread: Vec<JobRef> = queue
                    .iter()
                    .take_while(|j| j.due_at <= now)
                    .filter(|j| !cache.contains(j))
                    .take(size)
                    .copied()
                    .collect();
                more_to_read = unread.len() == size;
                // This read takes every due job left in the store: fresh events may be kept again.
                cache.behind &= more_to_read;
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
                        if let Some(event) = event {
                            cache.behind &= !queue.is_empty();
                            cache.offer_fresh(job, event);
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
                        read_back(&name, &mut queue, &mut cache, asked, found, free_slots(&sub, in_flight));
                    }
                },
                _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => {}
                _ = sweep.tick(), if !open => {
                    let ttl = sub.schedule.event_ttl.as_millis() as Millis;
                    let expired: Vec<JobRef> =
                        queue.iter().copied().filter(|j| j.accepted_at.saturating_add(ttl) <= now).collect();
                    for job in expired {
                        queue.remove(&job);
                        cache.take(&job);
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

/// Keep what a read-ahead found for the jobs still queued, as far as the budget allows (the first
/// `attempt_now`, which go out at once, in any case); drop the jobs the store no longer has
/// (their subscription was dropped meanwhile); if the read failed, try those jobs again later.
fn read_back(
    name: &str,
    queue: &mut BTreeSet<JobRef>,
    cache: &mut Cache,
    asked: Vec<JobRef>,
    found: Result<Vec<Loaded>, String>,
    attempt_now: usize,
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
    let mut kept = 0;
    for job in asked {
        match found.remove(&job.job_id) {
            // Still queued (the TTL sweep may have taken it meanwhile): keep it for its attempt,
            // unless the budget has no room (it is read again when due).
            Some(l) if queue.contains(&job) => {
                if cache.keep(job, Cached::Loaded(l), kept < attempt_now) {
                    kept += 1;
                }
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
    use prometheus_client::metrics::gauge::Gauge;

    use super::super::budget::EventBudget;
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

    fn cache(limit: usize) -> Cache {
        let mut account = EventBudget::new(limit, Gauge::default()).account();
        account.set_active(true);
        Cache::new(account)
    }

    /// An event with `bytes` of text data.
    fn event(id: &str, bytes: usize) -> Arc<CloudEvent> {
        let json = format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t","data":"{}"}}"#,
            "x".repeat(bytes)
        );
        Arc::new(CloudEvent::from_structured(json.as_bytes()).expect("event"))
    }

    fn fresh(id: &str, bytes: usize) -> Cached {
        Cached::Fresh(event(id, bytes))
    }

    #[test]
    fn a_read_ahead_keeps_queued_jobs_and_drops_those_the_store_lost() {
        let mut queue: BTreeSet<JobRef> = [job(1), job(2)].into();
        let mut kept = cache(1 << 20);
        // Job 3 was taken by the TTL sweep while the read was out; job 2 is gone from the store.
        let found = Ok(vec![loaded(1), loaded(3)]);
        read_back("s", &mut queue, &mut kept, vec![job(1), job(2), job(3)], found, 1);
        assert_eq!(queue.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1]);
        assert_eq!(kept.entries.keys().map(|j| j.job_id).collect::<Vec<_>>(), [1]);
        let Some(Cached::Loaded(one)) = kept.take(&job(1)) else { panic!("job 1 read back") };
        assert_eq!(one.attempts, 2, "the stored bookkeeping comes along");
    }

    #[test]
    fn a_failed_read_ahead_retries_its_jobs_later() {
        let mut queue: BTreeSet<JobRef> = [job(1), job(2)].into();
        let mut kept = cache(1 << 20);
        read_back("s", &mut queue, &mut kept, vec![job(1)], Err("disk I/O error".into()), 1);
        assert!(kept.entries.is_empty());
        let due: Vec<(i64, bool)> = queue.iter().map(|j| (j.job_id, j.due_at > now_ms())).collect();
        assert_eq!(due, [(2, false), (1, true)], "job 1 waits; job 2 was not part of the read");
    }

    #[test]
    fn fresh_events_are_cached_only_within_the_budget() {
        let one = footprint(&event("1", 10));
        let mut c = cache(one * 2);
        assert!(c.keep(job(1), fresh("1", 10), false));
        assert!(c.keep(job(2), fresh("2", 10), false));
        assert!(!c.keep(job(3), fresh("3", 10), false), "a third does not fit: its job reads it back later");
        assert!(c.keep(job(3), fresh("3", 10), true), "unless it is attempted at once");
        assert_eq!(c.account.held(), one * 3);
        c.take(&job(3));
        assert_eq!(c.account.held(), one * 2, "taking it out gives its bytes back");
    }

    #[test]
    fn a_dispatcher_over_its_share_drops_the_events_due_last() {
        let budget = EventBudget::new(1 << 20, Gauge::default());
        let mut account = budget.account();
        account.set_active(true);
        let mut c = Cache::new(account);
        let due = |i: i64| JobRef { due_at: 10 - i, job_id: i, accepted_at: 0 };
        for i in 1..=4 {
            assert!(c.keep(due(i), fresh(&i.to_string(), 200 * 1024), false));
        }
        let mut other = budget.account();
        other.set_active(true);
        c.shed(0);
        let left: Vec<i64> = c.entries.keys().map(|j| j.job_id).collect();
        assert_eq!(left, [4, 3], "the two due first stay, within half the budget");
        assert_eq!(c.account.excess(), 0);
    }

    #[test]
    fn shedding_keeps_the_events_about_to_go_out() {
        let budget = EventBudget::new(1 << 20, Gauge::default());
        let mut c = Cache::new(budget.account());
        c.account.set_active(true);
        c.keep(job(1), fresh("1", 700 * 1024), true);
        c.keep(job(2), fresh("2", 700 * 1024), true);
        assert!(c.account.excess() > 0, "forced past the budget");
        c.shed(1);
        assert_eq!(
            c.entries.keys().map(|j| j.job_id).collect::<Vec<_>>(),
            [1],
            "the first stays for its slot"
        );
    }

    #[test]
    fn reads_are_sized_to_the_room_in_the_budget() {
        let mut c = cache(100 * TYPICAL_FOOTPRINT);
        assert_eq!(c.read_size(0, false), 100);
        assert_eq!(c.read_size(8, false), 108, "jobs attempted at once come on top");
        assert!(c.keep(job(1), fresh("1", 100 * TYPICAL_FOOTPRINT - 1000), true));
        assert_eq!(c.read_size(0, false), 0, "no room: no read ahead");
        assert!(c.read_size(0, true) > 0, "but an unread head displaces what is cached behind it");
        assert_eq!(cache(1 << 30).read_size(0, false), READ_AHEAD);
    }

    #[test]
    fn once_a_fresh_event_is_left_in_the_store_later_ones_are_too() {
        let one = footprint(&event("1", 10));
        let mut c = cache(one * 2);
        c.offer_fresh(job(1), event("1", 10));
        c.offer_fresh(job(2), event("2", 10));
        c.offer_fresh(job(3), event("3", 10));
        c.take(&job(1));
        c.offer_fresh(job(4), event("4", 10));
        assert_eq!(
            c.entries.keys().map(|j| j.job_id).collect::<Vec<_>>(),
            [2],
            "4 waits for 3, read with it"
        );
        c.behind = false;
        c.offer_fresh(job(5), event("5", 10));
        assert_eq!(c.entries.len(), 2, "caught up: kept again");
    }

    #[test]
    fn events_due_sooner_displace_events_due_later() {
        let one = footprint(&event("1", 10));
        let mut c = cache(one * 2);
        let due = |at: i64| JobRef { due_at: at, job_id: at, accepted_at: 0 };
        assert!(c.keep(due(20), fresh("1", 10), false));
        assert!(c.keep(due(30), fresh("2", 10), false));
        assert!(!c.keep(due(40), fresh("3", 10), false), "due last, and no room: not kept");
        assert!(c.keep(due(10), fresh("4", 10), false), "due first: the one due last makes room");
        assert_eq!(c.entries.keys().map(|j| j.due_at).collect::<Vec<_>>(), [10, 20]);
    }
}
