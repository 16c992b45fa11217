//! Prometheus metrics of the operator.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
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
        Self { registry, reconciles, reconcile_errors, reconcile_duration, status_writes, ready_transitions }
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

    /// Count a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Count a change of a subscription's Ready reason.
    pub fn ready_changed(&self, reason: &'static str) {
        self.ready_transitions.get_or_create(&ReadyLabels { reason }).inc();
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
}
