//! Prometheus metrics of the operator.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptLabels {
    duplicate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    subscription_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    disposition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    reason: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    status_writes: Counter,
    ready_transitions: Family<ReadyLabels, Counter>,
    events_accepted: Family<AcceptLabels, Counter>,
    deliveries: Family<OutcomeLabels, Counter>,
    attempt_duration: Histogram,
    queue_depth: Family<QueueLabels, Gauge>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    api_requests: Family<MethodLabels, Counter>,
    event_cache_bytes: Gauge,
    store_free_bytes: Gauge,
    store_errors: Family<ErrorLabels, Counter>,
    status_writes_deferred: Counter,
    status_staleness: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hookline");
        let reconciles = Counter::default();
        registry.register("reconciles", "Subscription reconciliations started", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconciliation",
            reconcile_duration.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Subscription status writes sent to the API server",
            status_writes.clone(),
        );
        let ready_transitions = Family::<ReadyLabels, Counter>::default();
        registry.register(
            "ready_transitions",
            "Changes of a subscription's Ready reason, by new reason",
            ready_transitions.clone(),
        );
        let events_accepted = Family::<AcceptLabels, Counter>::default();
        registry.register(
            "events_accepted",
            "Events accepted at ingest (durably stored)",
            events_accepted.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by outcome and HTTP status class",
            deliveries.clone(),
        );
        let attempt_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "attempt_duration_seconds",
            "Duration of delivery attempts",
            attempt_duration.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_depth", "Jobs queued or in flight per subscription", queue_depth.clone());
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register("dead_letters", "Events given up on, by what became of them", dead_letters.clone());
        let api_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests this process sent to the Kubernetes API server, by HTTP method",
            api_requests.clone(),
        );
        let event_cache_bytes = Gauge::default();
        registry.register(
            "event_cache_bytes",
            "Bytes of events held in memory for queued jobs (bounded by --event-cache-bytes)",
            event_cache_bytes.clone(),
        );
        let store_free_bytes = Gauge::default();
        registry.register(
            "store_free_bytes",
            "Bytes the event store can still write, as last checked at publish (free on its volume, \
             plus reusable space inside its files when short)",
            store_free_bytes.clone(),
        );
        let store_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Event-store operations that failed, by error (sqlite, full, closed, …)",
            store_errors.clone(),
        );
        let status_writes_deferred = Counter::default();
        registry.register(
            "status_writes_deferred",
            "Delivery-status writes that fell due and waited for the write budget",
            status_writes_deferred.clone(),
        );
        let status_staleness = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "status_staleness_seconds",
            "Age of the oldest delivery result not yet written to a subscription's status",
            status_staleness.clone(),
        );
        Self {
            status_writes_deferred,
            status_staleness,
            store_errors,
            api_requests,
            event_cache_bytes,
            store_free_bytes,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            ready_transitions,
            events_accepted,
            deliveries,
            attempt_duration,
            queue_depth,
            dead_letters,
        }
    }
}

impl Metrics {
    /// The gauge of cached event bytes, for the budget that keeps it.
    pub fn event_cache_bytes(&self) -> Gauge {
        self.event_cache_bytes.clone()
    }

    /// The store's free space, as ingest last read it.
    pub fn set_store_free_bytes(&self, bytes: u64) {
        self.store_free_bytes.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// Count one request to the Kubernetes API server (the kube client's request layer calls it).
    pub fn api_request(&self, method: &http::Method) {
        self.api_requests.get_or_create(&MethodLabels { method: method.as_str().to_string() }).inc();
    }
}

/// Records the duration of one reconciliation when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Count a reconciliation and time it until the returned guard is dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    /// Count a failed reconciliation.
    pub fn reconcile_failed(&self, error: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Count delivery-status writes the budget deferred.
    pub fn status_writes_deferred(&self, writes: u64) {
        self.status_writes_deferred.inc_by(writes);
    }

    /// Set the age of the oldest delivery result not yet in status.
    pub fn set_status_staleness(&self, age: std::time::Duration) {
        self.status_staleness.set(age.as_secs_f64());
    }

    /// Count a failed event-store operation.
    pub fn store_failed(&self, error: &'static str) {
        self.store_errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Count a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Count a change of a subscription's Ready reason.
    pub fn ready_changed(&self, reason: &'static str) {
        self.ready_transitions.get_or_create(&ReadyLabels { reason }).inc();
    }

    /// Count an accepted event.
    pub fn event_accepted(&self, duplicate: bool) {
        let duplicate = if duplicate { "true" } else { "false" };
        self.events_accepted.get_or_create(&AcceptLabels { duplicate }).inc();
    }

    /// Count a finished delivery attempt by the endpoint's HTTP status (`None`: no answer).
    pub fn attempt_finished(&self, status: Option<u16>, duration: std::time::Duration) {
        let labels = match status {
            Some(code) => OutcomeLabels {
                outcome: if (200..300).contains(&code) { "success" } else { "failure" },
                class: match code {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
            },
            None => OutcomeLabels { outcome: "failure", class: "none" },
        };
        self.deliveries.get_or_create(&labels).inc();
        self.attempt_duration.observe(duration.as_secs_f64());
    }

    /// Set a subscription's queue depth.
    pub fn set_queue_depth(&self, uid: &str, depth: i64) {
        self.queue_depth.get_or_create(&QueueLabels { subscription_uid: uid.to_string() }).set(depth);
    }

    /// Stop reporting a subscription's queue.
    pub fn forget_queue(&self, uid: &str) {
        self.queue_depth.remove(&QueueLabels { subscription_uid: uid.to_string() });
    }

    /// Count an event given up on: `queued` for a FailedEvent, `dropped`, `created`, `capped`.
    pub fn dead_lettered(&self, disposition: &'static str) {
        self.dead_letters.get_or_create(&DeadLetterLabels { disposition }).inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_format() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed("kube");
        m.status_written();
        let text = m.encode();
        assert!(text.contains("hookline_reconciles_total 1"), "{text}");
        assert!(text.contains("hookline_reconcile_errors_total{error=\"kube\"} 1"), "{text}");
        assert!(text.contains("hookline_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains("hookline_status_writes_total 1"), "{text}");
    }

    #[test]
    fn store_errors_are_counted_by_label() {
        let m = Metrics::default();
        m.store_failed("full");
        m.store_failed("closed");
        m.store_failed("closed");
        let text = m.encode();
        assert!(text.contains("hookline_store_errors_total{error=\"full\"} 1"), "{text}");
        assert!(text.contains("hookline_store_errors_total{error=\"closed\"} 2"), "{text}");
    }
}
