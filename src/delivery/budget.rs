//! One memory budget for the events dispatchers keep in memory for queued jobs (fresh events as
//! published, and events read ahead from the store), shared fairly between subscriptions.
//!
//! Every dispatcher with work queued is *active* and may hold up to `limit / active` bytes, and
//! all of them together never more than `limit`. When another dispatcher becomes active the
//! share shrinks, and a dispatcher above it drops cached events (due last first) the next time it
//! runs (a new job, a finished attempt or a timer: within the longest attempt timeout) until it
//! fits again; their jobs stay queued and their events are read back from the store when due. So
//! an endpoint that hangs with a large backlog keeps at most its share, never everyone's memory.
//! No dispatcher is woken for a change of share: with thousands of subscriptions, each one going
//! busy or idle would wake all the others.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use crate::event::CloudEvent;

/// What one cached event costs beyond its attributes and payload: the parsed event, its `Arc`
/// and a map entry.
const OVERHEAD: usize = std::mem::size_of::<CloudEvent>() + 64;

/// The memory an event takes while it is cached.
pub fn footprint(event: &CloudEvent) -> usize {
    event.size() + OVERHEAD
}

/// The budget shared by every dispatcher of this process.
pub struct EventBudget {
    limit: usize,
    inner: Mutex<Inner>,
    used_gauge: Gauge,
}

#[derive(Default)]
struct Inner {
    used: usize,
    active: usize,
}

impl EventBudget {
    /// A budget of `limit` bytes; `used_gauge` follows the bytes held.
    pub fn new(limit: usize, used_gauge: Gauge) -> Arc<Self> {
        Arc::new(EventBudget { limit, inner: Mutex::default(), used_gauge })
    }

    /// A new dispatcher's account, inactive and empty.
    pub fn account(self: &Arc<Self>) -> Account {
        Account { budget: self.clone(), held: 0, active: false }
    }

    /// Bytes held by all dispatchers.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn share_of(&self, active: usize) -> usize {
        self.limit / active.max(1)
    }

    fn set_active(&self, delta: isize) {
        let mut inner = self.lock();
        inner.active = inner.active.saturating_add_signed(delta);
    }
}

/// One dispatcher's part of the budget. Whatever it holds is given back when it is dropped.
pub struct Account {
    budget: Arc<EventBudget>,
    held: usize,
    active: bool,
}

impl Account {
    /// Whether the dispatcher has work queued: only those share the budget.
    pub fn set_active(&mut self, active: bool) {
        if active != self.active {
            self.active = active;
            self.budget.set_active(if active { 1 } else { -1 });
        }
    }

    /// Hold `bytes` more if that stays within this dispatcher's share and the whole budget.
    pub fn try_take(&mut self, bytes: usize) -> bool {
        let mut inner = self.budget.lock();
        let share = self.budget.share_of(inner.active);
        if self.held + bytes > share || inner.used + bytes > self.budget.limit {
            return false;
        }
        inner.used += bytes;
        self.held += bytes;
        self.budget.used_gauge.set(inner.used as i64);
        true
    }

    /// Hold `bytes` more whatever the budget says: for events about to be attempted, which leave
    /// the cache at once (an attempt's own memory is bounded by `maxConcurrency`).
    pub fn force(&mut self, bytes: usize) {
        let mut inner = self.budget.lock();
        inner.used += bytes;
        self.held += bytes;
        self.budget.used_gauge.set(inner.used as i64);
    }

    /// Give back `bytes` this account held.
    pub fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.held);
        let mut inner = self.budget.lock();
        inner.used -= bytes;
        self.held -= bytes;
        self.budget.used_gauge.set(inner.used as i64);
    }

    /// Bytes this account holds beyond its current share: what it should drop.
    pub fn excess(&self) -> usize {
        let share = self.budget.share_of(self.budget.lock().active);
        self.held.saturating_sub(share)
    }

    /// Bytes this account may still take.
    pub fn room(&self) -> usize {
        let inner = self.budget.lock();
        let share = self.budget.share_of(inner.active);
        share.saturating_sub(self.held).min(self.budget.limit.saturating_sub(inner.used))
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let held = self.held;
        self.release(held);
        self.set_active(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<EventBudget> {
        EventBudget::new(limit, Gauge::default())
    }

    /// A dispatcher's account, with work queued.
    fn active(b: &Arc<EventBudget>) -> Account {
        let mut a = b.account();
        a.set_active(true);
        a
    }

    #[test]
    fn one_active_dispatcher_may_use_the_whole_budget_and_no_more() {
        let b = budget(1000);
        let mut a = active(&b);
        assert!(a.try_take(600));
        assert!(a.try_take(400));
        assert!(!a.try_take(1), "the budget is spent");
        assert_eq!((b.used(), a.room()), (1000, 0));
        a.release(400);
        assert_eq!((b.used(), a.room()), (600, 400));
    }

    #[test]
    fn a_new_active_dispatcher_shrinks_the_share_of_one_that_holds_everything() {
        let b = budget(1000);
        let mut stalled = active(&b);
        assert!(stalled.try_take(1000));
        let mut busy = active(&b);
        assert_eq!(stalled.excess(), 500, "the stalled one must drop half");
        assert!(!busy.try_take(100), "nothing is free until it does");
        stalled.release(stalled.excess());
        assert!(busy.try_take(500), "then the newcomer gets its share");
        assert!(!busy.try_take(1), "and no more");
        assert_eq!(b.used(), 1000);
    }

    #[test]
    fn forced_bytes_count_and_idle_dispatchers_do_not_share() {
        let b = budget(1000);
        let mut a = b.account();
        let mut idle = b.account();
        idle.set_active(false);
        a.set_active(true);
        a.force(1200);
        assert_eq!((b.used(), a.excess(), a.room()), (1200, 200, 0));
        drop(a);
        assert_eq!(b.used(), 0, "a dropped account gives everything back");
        let c = active(&b);
        assert_eq!(c.room(), 1000, "the dropped account no longer counts as active");
    }
}
