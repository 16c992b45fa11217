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
    DeadLetterStats, DeliveryStats, Disabled, LastDelivery, Reason, WebhookSubscription, condition_type,
    set_condition,
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
    /// The first failure since the last success, as seen here.
    failing_since: Option<Time>,
    /// `failing_since` is known here (a success, or delivery enabled again): the one found in
    /// status (`base`) no longer counts.
    failing_known: bool,
    /// Delivery is disabled (this process decided, or status said so when it started).
    disabled: Option<Disabled>,
    /// Counted once as deferred since it fell due.
    deferred: bool,
}

impl Tracker {
    /// Since when attempts have kept failing: as seen here, or as status said at start.
    fn failing_since(&self) -> Option<Time> {
        let base = self.base.as_ref().and_then(|b| b.failing_since.clone());
        if self.failing_known { self.failing_since.clone() } else { base.or(self.failing_since.clone()) }
    }

    fn touch(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.dirty_since = Some(Instant::now());
        }
    }

    /// Follow how long attempts have kept failing, and decide whether `report` disables
    /// delivery (returned when it does, newly).
    fn disable(&mut self, report: &AttemptReport) -> Option<Disabled> {
        let now = &report.last.time;
        // Disabled under another generation or enable annotation: enabled again since, and the
        // time failing counts from now.
        if self.disabled.as_ref().is_some_and(|d| !d.applies_to(report.generation, report.enable.as_deref()))
        {
            self.disabled = None;
            (self.failing_since, self.failing_known) = (None, true);
        }
        if report.last.success {
            (self.failing_since, self.failing_known) = (None, true);
            return None;
        }
        if self.failing_since().is_none() {
            self.failing_since = Some(now.clone());
        }
        if self.disabled.is_some() {
            return None;
        }
        let (reason, message) = if report.gone {
            (GONE, "The endpoint answered 410 Gone".to_string())
        } else {
            let after = report.disable_after?;
            let since = self.failing_since()?;
            let failing = now.0.duration_since(since.0);
            if failing < jiff::SignedDuration::try_from(after).ok()? {
                return None;
            }
            let message = format!(
                "No delivery succeeded for {} while attempts kept failing (since {:.0})",
                humantime::format_duration(after),
                since.0
            );
            (FAILING_TOO_LONG, message)
        };
        let disabled = Disabled {
            reason: reason.into(),
            message,
            time: now.clone(),
            generation: report.generation,
            enable_annotation: report.enable.clone(),
        };
        self.disabled = Some(disabled.clone());
        Some(disabled)
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
    /// The subscription's annotation `hookline.dev/enable` then.
    pub enable: Option<String>,
    /// `retryPolicy.disableAfter` (`None`: never).
    pub disable_after: Option<Duration>,
}

/// `status.disabled.reason` after a 410 Gone.
pub const GONE: &str = "EndpointGone";
/// `status.disabled.reason` after failing for `retryPolicy.disableAfter`.
pub const FAILING_TOO_LONG: &str = "FailingTooLong";

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

    /// Record one finished attempt; returns why delivery is to be disabled, if this attempt
    /// disables it (a 410 Gone, or failing for `disableAfter`).
    pub fn attempt(&self, uid: &str, namespace: &str, name: &str, report: AttemptReport) -> Option<Disabled> {
        self.with(uid, namespace, name, |t| {
            let before = health(&t.healthy);
            let now = report.last.time.clone();
            let disabled = t.disable(&report);
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
                let msg = "The endpoint answered 410 Gone: delivery is disabled until the spec or the annotation \
                           hookline.dev/enable changes";
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
                // A 410 shows until delivery succeeds, while it disables delivery.
                let gone = t.disabled.as_ref().is_some_and(|d| d.reason == GONE);
                let gone_shown = t.healthy.first().is_some_and(|c| c.reason == Reason::EndpointGone.as_str());
                if !(gone && gone_shown) || report.last.success {
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
            t.urgent |= health(&t.healthy) != before || disabled.is_some();
            t.touch();
            disabled
        })
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

    fn set_base(&self, uid: &str, base: DeliveryStats, base_dropped: u64, disabled: Option<Disabled>) {
        if let Some(t) = self.trackers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid)
            && t.base.is_none()
        {
            t.base = Some(base);
            t.base_dropped = base_dropped;
            if !t.failing_known && t.disabled.is_none() {
                t.disabled = disabled;
            }
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
        failing_since: t.failing_since(),
    };
    let mut status = json!({ "deliveryStats": stats, "conditions": t.healthy });
    // Left out once delivery is enabled again: this writer owns the field, so it goes.
    if let Some(disabled) = &t.disabled {
        status["disabled"] = json!(disabled);
    }
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
mod tests;
