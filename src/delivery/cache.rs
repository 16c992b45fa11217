//! The events of a dispatcher's queued jobs held in memory, within its share of the
//! [`EventBudget`](super::budget::EventBudget): fresh ones as published, others read ahead from the
//! store. Jobs without a cached event are read from the store when due.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::budget::{Account, footprint};
use super::job::Loaded;
use crate::event::CloudEvent;
use crate::store::JobRef;

/// Most jobs read back from the store in one read. While the previous read came back full, the
/// next starts as soon as the budget has room, so a backlog in the store is read in large batches
/// ahead of its attempts instead of one read per freed concurrency slot.
pub(super) const READ_AHEAD: usize = 256;

/// Most events one dispatcher caches, however small: finding the unread jobs for a read walks past
/// the cached ones, so a larger cache costs more per read than it saves (without this cap the
/// benchmark's backlog cached ~130,000 small events per subscription and delivered 10–20% less;
/// BENCHMARKS.md change 13).
const MAX_CACHED: usize = 10_000;

/// A first guess at a cached event's footprint, before any was seen: sizes the first read.
const TYPICAL_FOOTPRINT: usize = 4096;

/// A cached event: fresh as published, or read back from the store with the job's bookkeeping.
pub(super) enum Cached {
    Fresh(Arc<CloudEvent>),
    Loaded(Loaded),
}

/// See the module docs.
pub(super) struct Cache {
    /// In the queue's order (due first), so that shedding drops the events needed last.
    entries: BTreeMap<JobRef, (Cached, usize)>,
    /// How many of `entries` were read back from the store.
    pub(super) loaded: usize,
    pub(super) account: Account,
    /// Running estimate of one event's footprint, to size reads to the room in the budget.
    typical: usize,
    /// Fresh jobs were queued without their events (no room): later fresh events are not kept
    /// either until the reads have caught up, since those reads would evict them to make room
    /// for the jobs due before them, and they would be read again.
    pub(super) behind: bool,
}

impl Cache {
    pub(super) fn new(account: Account) -> Self {
        Cache { entries: BTreeMap::new(), loaded: 0, account, typical: TYPICAL_FOOTPRINT, behind: false }
    }

    pub(super) fn contains(&self, job: &JobRef) -> bool {
        self.entries.contains_key(job)
    }

    /// Keep the event of a job just published, unless earlier ones had to be left in the store.
    pub(super) fn offer_fresh(&mut self, job: JobRef, event: Arc<CloudEvent>) {
        if !self.behind && !self.keep(job, Cached::Fresh(event), false) {
            self.behind = true;
        }
    }

    /// Keep `cached` for `job` if the budget allows, making room by dropping the events of jobs
    /// due after it (always, when `forced`: it is attempted next).
    pub(super) fn keep(&mut self, job: JobRef, cached: Cached, forced: bool) -> bool {
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
    pub(super) fn take(&mut self, job: &JobRef) -> Option<Cached> {
        let (cached, bytes) = self.entries.remove(job)?;
        Some(self.forget(cached, bytes))
    }

    /// Drop the cached event of the job due last.
    pub(super) fn drop_last(&mut self) {
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
    pub(super) fn read_size(&self, needed: usize, head_unread: bool) -> usize {
        let behind = if head_unread { self.account.held() } else { 0 };
        (needed + (self.account.room() + behind) / self.typical.max(1)).min(READ_AHEAD)
    }

    /// Drop cached events of the jobs due last until this dispatcher is within its share again,
    /// keeping the first `keep_first` (they go out as soon as their slot or rate allows).
    pub(super) fn shed(&mut self, keep_first: usize) {
        while self.entries.len() > keep_first && self.account.excess() > 0 {
            self.drop_last();
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::super::budget::EventBudget;
    use super::*;

    pub(in crate::delivery) fn job(job_id: i64) -> JobRef {
        JobRef { due_at: 1_000, job_id, accepted_at: 1_000, partition: None }
    }

    pub(in crate::delivery) fn cache(limit: usize) -> Cache {
        let mut account = EventBudget::new(limit, Gauge::default()).account();
        account.set_active(true);
        Cache::new(account)
    }

    /// An event with `bytes` of text data.
    pub(in crate::delivery) fn event(id: &str, bytes: usize) -> Arc<CloudEvent> {
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
        let due = |i: i64| JobRef { due_at: 10 - i, job_id: i, accepted_at: 0, partition: None };
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
        let due = |at: i64| JobRef { due_at: at, job_id: at, accepted_at: 0, partition: None };
        assert!(c.keep(due(20), fresh("1", 10), false));
        assert!(c.keep(due(30), fresh("2", 10), false));
        assert!(!c.keep(due(40), fresh("3", 10), false), "due last, and no room: not kept");
        assert!(c.keep(due(10), fresh("4", 10), false), "due first: the one due last makes room");
        assert_eq!(c.entries.keys().map(|j| j.due_at).collect::<Vec<_>>(), [10, 20]);
    }
}
