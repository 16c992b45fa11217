//! Delivery results as subscription status, coalesced: dispatchers update an in-memory board on
//! every attempt, and one writer ([`run_writer`]) sends at most one status write per subscription
//! per interval, however many events flow, and no more writes per second than its budget, however
//! many subscriptions are busy. It owns only the delivery fields (its own field manager), so it
//! never fights the controller, which owns the other conditions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use crate::api::{
    DeadLetterStats, DeliveryStats, LastDelivery, Reason, WebhookSubscription, condition_type, set_condition,
};
use crate::k8s::status_envelope;

/// The field manager of delivery results in status.
pub const DELIVERY_FIELD_MANAGER: &str = "hookline-delivery";

mod writer;

pub use writer::{WriteBudget, run_writer};

/// Failed attempts in a row before `Healthy` turns False.
pub const FAILING_AFTER: u64 = 3;

#[derive(Clone, Debug, Default)]
struct Tracker {
    namespace: String,
    name: String,
    last: Option<LastDelivery>,
    /// Counters found in status when this process first wrote; ours are added to them.
    base: Option<DeliveryStats>,
    local: DeliveryStats,
    next_retry_at: Option<Time>,
    healthy: Vec<Condition>,
    /// FailedEvents that exist for the subscription; `None` until first counted.
    dead_letter_count: Option<u64>,
    /// Dead letters dropped since this process started (cap reached, or dead-lettering off).
    dropped: u64,
    /// `dropped` found in status when this process first wrote.
    base_dropped: u64,
    dirty: bool,
    /// Since when an unwritten change waits (set when `dirty` turns true).
    dirty_since: Option<Instant>,
    /// The `Healthy` condition moved (status or reason) since the last write: written first.
    urgent: bool,
    /// The circuit breaker is open: why, and when the next probe goes.
    circuit: Option<String>,
    /// When the writer last took this tracker.
    written_at: Option<Instant>,
    /// Counted once as deferred since it fell due.
    deferred: bool,
}

impl Tracker {
    fn touch(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.dirty_since = Some(Instant::now());
        }
    }
}

/// What one attempt changes in status.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    /// The attempt, as `status.lastDelivery` shows it.
    pub last: LastDelivery,
    /// The event was given up on (dead-lettered or dropped).
    pub gave_up: bool,
    /// The endpoint answered 410 Gone.
    pub gone: bool,
    /// The subscription generation the attempt was made for.
    pub generation: i64,
}

/// The in-memory delivery state of every subscription this process delivers for.
#[derive(Clone, Default)]
pub struct StatusBoard {
    trackers: Arc<Mutex<HashMap<String, Tracker>>>,
}

impl StatusBoard {
    fn with<R>(&self, uid: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        // Look up before inserting: this runs per attempt, and the key is rarely new.
        if let Some(t) = trackers.get_mut(uid) {
            return f(t);
        }
        let t = trackers.entry(uid.to_string()).or_insert_with(|| Tracker {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ..Tracker::default()
        });
        f(t)
    }

    /// Record one finished attempt.
    pub fn attempt(&self, uid: &str, namespace: &str, name: &str, report: AttemptReport) {
        self.with(uid, namespace, name, |t| {
            let before = health(&t.healthy);
            let now = report.last.time.clone();
            if report.last.success {
                t.local.delivered += 1;
                t.local.consecutive_failures = 0;
            } else {
                t.local.failed_attempts += 1;
                t.local.consecutive_failures += 1;
            }
            if report.gave_up {
                t.local.dead_lettered += 1;
            }
            let generation = Some(report.generation);
            let failures = t.local.consecutive_failures;
            if report.last.success {
                t.circuit = None;
            }
            if let (Some(msg), false) = (&t.circuit, report.gone || report.last.success) {
                // A failure while the breaker is open (the probe, or a request sent before it
                // opened) leaves it saying so.
                let msg = msg.clone();
                set_condition(
                    &mut t.healthy,
                    condition_type::HEALTHY,
                    false,
                    Reason::CircuitOpen,
                    &msg,
                    generation,
                    &now,
                );
            } else if report.gone {
                let msg = "The endpoint answered 410 Gone: delivery is disabled until the spec changes";
                set_condition(
                    &mut t.healthy,
                    condition_type::HEALTHY,
                    false,
                    Reason::EndpointGone,
                    msg,
                    generation,
                    &now,
                );
            } else if report.last.success || failures < FAILING_AFTER {
                let msg = if report.last.success {
                    "The last delivery succeeded"
                } else {
                    "Recent deliveries succeed"
                };
                if t.healthy
                    .first()
                    .is_none_or(|c| c.reason != Reason::EndpointGone.as_str() || report.last.success)
                {
                    set_condition(
                        &mut t.healthy,
                        condition_type::HEALTHY,
                        true,
                        Reason::Delivering,
                        msg,
                        generation,
                        &now,
                    );
                }
            } else {
                let cause = match (&report.last.status_code, &report.last.error) {
                    (Some(code), _) => format!("HTTP {code}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "unknown error".into(),
                };
                let msg = format!("{failures} consecutive attempts failed; the last: {cause}");
                set_condition(
                    &mut t.healthy,
                    condition_type::HEALTHY,
                    false,
                    Reason::DeliveryFailing,
                    msg,
                    generation,
                    &now,
                );
            }
            t.last = Some(report.last);
            t.urgent |= health(&t.healthy) != before;
            t.touch();
        });
    }

    /// The circuit breaker opened (`Some`: why, and when the next probe goes) or closed. Opening
    /// shows at once as `Healthy=False/CircuitOpen`; closing shows with the successful probe.
    pub fn circuit(&self, uid: &str, namespace: &str, name: &str, open: Option<String>, generation: i64) {
        self.with(uid, namespace, name, |t| {
            let before = health(&t.healthy);
            if let Some(msg) = &open {
                let now = Time(jiff::Timestamp::now());
                set_condition(
                    &mut t.healthy,
                    condition_type::HEALTHY,
                    false,
                    Reason::CircuitOpen,
                    msg,
                    Some(generation),
                    &now,
                );
            }
            t.circuit = open;
            t.urgent |= health(&t.healthy) != before;
            t.touch();
        });
    }

    /// Update queue depth and the next scheduled retry.
    pub fn queue(&self, uid: &str, namespace: &str, name: &str, pending: u64, next_retry_at: Option<Time>) {
        self.with(uid, namespace, name, |t| {
            if t.local.pending != pending || t.next_retry_at != next_retry_at {
                t.local.pending = pending;
                t.next_retry_at = next_retry_at;
                t.touch();
            }
        });
    }

    /// Count an event given up on without an attempt (e.g. its TTL passed while held).
    pub fn gave_up(&self, uid: &str, namespace: &str, name: &str) {
        self.with(uid, namespace, name, |t| {
            t.local.dead_lettered += 1;
            t.touch();
        });
    }

    /// Set how many FailedEvents the subscription has.
    pub fn dead_letters(&self, uid: &str, namespace: &str, name: &str, count: u64) {
        self.with(uid, namespace, name, |t| {
            if t.dead_letter_count != Some(count) {
                t.dead_letter_count = Some(count);
                t.touch();
            }
        });
    }

    /// Count a dead letter that was dropped (the cap was reached, or dead-lettering is off).
    pub fn dead_letter_dropped(&self, uid: &str, namespace: &str, name: &str) {
        self.with(uid, namespace, name, |t| {
            t.dropped += 1;
            t.touch();
        });
    }

    /// Forget a subscription.
    pub fn remove(&self, uid: &str) {
        self.trackers.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// Take the trackers that changed since the last call.
    fn take_dirty(&self) -> Vec<(String, Tracker)> {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        trackers
            .iter_mut()
            .filter(|(_, t)| t.dirty)
            .map(|(uid, t)| {
                (t.dirty, t.urgent, t.deferred, t.dirty_since) = (false, false, false, None);
                (uid.clone(), t.clone())
            })
            .collect()
    }

    fn set_base(&self, uid: &str, base: DeliveryStats, base_dropped: u64) {
        if let Some(t) = self.trackers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid)
            && t.base.is_none()
        {
            t.base = Some(base);
            t.base_dropped = base_dropped;
        }
    }

    /// A write failed: write it again, as soon as the budget allows.
    fn mark_dirty(&self, uid: &str, urgent: bool) {
        if let Some(t) = self.trackers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid) {
            t.urgent |= urgent;
            t.touch();
        }
    }

    /// Take at most `max` trackers to write now: those whose `Healthy` condition moved first,
    /// then those whose last write is at least `interval` old, the longest-waiting first (so
    /// that, with more busy subscriptions than the budget, each is refreshed in turn).
    fn pick(&self, max: usize, interval: Duration, now: Instant) -> Picked {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        let mut due: Vec<(bool, Instant, String)> = trackers
            .iter()
            .filter(|(_, t)| t.dirty && (t.urgent || t.written_at.is_none_or(|w| now - w >= interval)))
            .map(|(uid, t)| (!t.urgent, t.dirty_since.unwrap_or(now), uid.clone()))
            .collect();
        due.sort();
        let mut picked = Picked::default();
        for (i, (_, _, uid)) in due.into_iter().enumerate() {
            let Some(t) = trackers.get_mut(&uid) else { continue };
            if i >= max {
                if !t.deferred {
                    t.deferred = true;
                    picked.newly_deferred += 1;
                }
                continue;
            }
            picked.writes.push((uid, t.urgent));
            (t.dirty, t.urgent, t.deferred, t.dirty_since) = (false, false, false, None);
            t.written_at = Some(now);
        }
        picked.oldest = trackers.values().filter_map(|t| t.dirty_since).min();
        picked
    }
}

/// The `Healthy` condition's status and reason, for telling a transition from more of the same. A
/// subscription without one yet counts as healthy: its first `Healthy=True` is not news (1,000
/// new busy subscriptions would otherwise all be urgent at once), its first `False` is.
fn health(conditions: &[Condition]) -> (String, String) {
    conditions.first().map_or_else(
        || ("True".into(), Reason::Delivering.as_str().into()),
        |c| (c.status.clone(), c.reason.clone()),
    )
}

/// What [`StatusBoard::pick`] took, and what it left waiting.
#[derive(Default)]
struct Picked {
    /// The subscriptions (by UID) to write, each with whether it carries a `Healthy` transition.
    writes: Vec<(String, bool)>,
    /// Trackers due that the budget left for later, not counted before.
    newly_deferred: u64,
    /// Since when the oldest unwritten change waits, over every tracker.
    oldest: Option<Instant>,
}

/// The status fields this writer owns, for one subscription.
fn status_patch(t: &Tracker) -> serde_json::Value {
    let base = t.base.clone().unwrap_or_default();
    let stats = DeliveryStats {
        delivered: base.delivered + t.local.delivered,
        failed_attempts: base.failed_attempts + t.local.failed_attempts,
        dead_lettered: base.dead_lettered + t.local.dead_lettered,
        pending: t.local.pending,
        consecutive_failures: t.local.consecutive_failures,
    };
    let mut status = json!({ "deliveryStats": stats, "conditions": t.healthy });
    if t.dead_letter_count.is_some() || t.dropped > 0 {
        status["deadLetters"] = json!(DeadLetterStats {
            count: t.dead_letter_count.unwrap_or(0),
            dropped: t.base_dropped + t.dropped
        });
    }
    if let Some(last) = &t.last {
        status["lastDelivery"] = json!(last);
    }
    if let Some(next) = &t.next_retry_at {
        status["nextRetryAt"] = json!(next);
    }
    status_envelope::<WebhookSubscription>(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(success: bool, code: u16) -> AttemptReport {
        AttemptReport {
            last: LastDelivery {
                event_id: "e".into(),
                event_type: "t".into(),
                attempt: 1,
                time: Time(jiff::Timestamp::from_second(100).expect("ts")),
                success,
                status_code: Some(code),
                duration_ms: 5,
                error: None,
            },
            gave_up: false,
            gone: code == 410,
            generation: 1,
        }
    }

    fn healthy(board: &StatusBoard) -> (String, String) {
        let t = board.trackers.lock().expect("lock");
        let c = &t["u"].healthy[0];
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn healthy_turns_false_after_consecutive_failures_and_back_on_success() {
        let board = StatusBoard::default();
        board.attempt("u", "ns", "s", report(true, 200));
        assert_eq!(healthy(&board), ("True".into(), "Delivering".into()));
        for _ in 0..FAILING_AFTER - 1 {
            board.attempt("u", "ns", "s", report(false, 500));
        }
        assert_eq!(healthy(&board).0, "True", "a few failures are not yet unhealthy");
        board.attempt("u", "ns", "s", report(false, 500));
        assert_eq!(healthy(&board), ("False".into(), "DeliveryFailing".into()));
        board.attempt("u", "ns", "s", report(true, 200));
        assert_eq!(healthy(&board), ("True".into(), "Delivering".into()));
    }

    #[test]
    fn gone_sticks_until_a_success() {
        let board = StatusBoard::default();
        board.attempt("u", "ns", "s", report(false, 410));
        assert_eq!(healthy(&board), ("False".into(), "EndpointGone".into()));
        board.attempt("u", "ns", "s", report(false, 500));
        assert_eq!(healthy(&board).1, "EndpointGone");
    }

    #[test]
    fn many_attempts_make_one_pending_write_with_summed_counters() {
        let board = StatusBoard::default();
        for _ in 0..100 {
            board.attempt("u", "ns", "s", report(true, 200));
        }
        let dirty = board.take_dirty();
        assert_eq!(dirty.len(), 1, "coalesced into one write");
        assert!(board.take_dirty().is_empty());
        board.set_base("u", DeliveryStats { delivered: 5, ..Default::default() }, 0);
        let t = board.trackers.lock().expect("lock")["u"].clone();
        let patch = status_patch(&t);
        assert_eq!(patch["status"]["deliveryStats"]["delivered"], 105);
        assert_eq!(patch["status"]["conditions"][0]["type"], "Healthy");
    }

    fn uids(picked: &Picked) -> Vec<&str> {
        picked.writes.iter().map(|(uid, _)| uid.as_str()).collect()
    }

    fn urgent(picked: &Picked) -> usize {
        picked.writes.iter().filter(|(_, urgent)| *urgent).count()
    }

    #[test]
    fn a_healthy_transition_is_written_first_and_without_waiting_for_the_interval() {
        let board = StatusBoard::default();
        let interval = Duration::from_secs(5);
        let start = Instant::now();
        for uid in ["a", "b", "c"] {
            board.attempt(uid, "ns", uid, report(true, 200));
        }
        assert_eq!(board.pick(3, interval, start).writes.len(), 3, "first results: all due");
        board.queue("a", "ns", "a", 7, None);
        board.queue("b", "ns", "b", 7, None);
        for _ in 0..FAILING_AFTER {
            board.attempt("c", "ns", "c", report(false, 500));
        }
        let soon = start + Duration::from_secs(1);
        let picked = board.pick(1, interval, soon);
        assert_eq!(uids(&picked), ["c"], "Healthy=False goes out at once, before the interval");
        assert_eq!(urgent(&picked), 1);
        assert!(board.pick(10, interval, soon).writes.is_empty(), "the others wait for the interval");
        assert_eq!(board.pick(10, interval, start + interval).writes.len(), 2);
    }

    #[test]
    fn over_budget_the_longest_waiting_go_first_and_deferrals_count_once() {
        let board = StatusBoard::default();
        for uid in ["a", "b", "c"] {
            board.attempt(uid, "ns", uid, report(true, 200));
        }
        let now = Instant::now();
        let first = board.pick(1, Duration::ZERO, now);
        assert_eq!(uids(&first), ["a"], "the oldest change first");
        assert_eq!(first.newly_deferred, 2);
        assert!(first.oldest.is_some(), "b and c still wait");
        board.attempt("a", "ns", "a", report(true, 200));
        let second = board.pick(1, Duration::ZERO, now);
        assert_eq!(uids(&second), ["b"], "a changed again, but b waited longer");
        assert_eq!(second.newly_deferred, 1, "c counted once; a newly");
        assert_eq!(uids(&board.pick(5, Duration::ZERO, now)), ["c", "a"]);
        assert!(board.pick(5, Duration::ZERO, now).oldest.is_none(), "nothing waits");
    }

    #[test]
    fn a_first_healthy_result_is_no_news_but_a_first_failure_is() {
        let board = StatusBoard::default();
        board.attempt("ok", "ns", "ok", report(true, 200));
        board.attempt("gone", "ns", "gone", report(false, 410));
        let picked = board.pick(1, Duration::ZERO, Instant::now());
        assert_eq!(uids(&picked), ["gone"], "EndpointGone first, although it changed last");
        assert_eq!(urgent(&picked), 1);
    }
}
