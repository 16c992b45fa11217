//! Prometheus metrics of the operator.
//!
//! Over 400 lines on purpose: every metric in one registry, each with its help text and fixed
//! label values, so the names and labels a dashboard or alert may use are in one place.

use std::collections::HashMap;
use std::sync::Mutex;
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

/// A subscription, by namespace and name: what alerts and dashboards name (bounded by the number
/// of subscriptions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    name: String,
    outcome: &'static str,
    class: &'static str,
}

/// Every `(outcome, class)` an attempt can be counted under.
const OUTCOMES: [(&str, &str); 5] =
    [("success", "2xx"), ("failure", "3xx"), ("failure", "4xx"), ("failure", "5xx"), ("failure", "none")];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptLabels {
    duplicate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    namespace: String,
    name: String,
    disposition: &'static str,
}

/// Every disposition a dead letter can be counted under.
const DISPOSITIONS: [&str; 6] = ["queued", "dropped", "created", "capped", "orphaned", "unreadable"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyGaugeLabels {
    namespace: String,
    name: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabels {
    writer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    server: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadTimeoutLabels {
    server: &'static str,
    part: &'static str,
}

/// Why a server refuses a connection (see `server::connections`).
const REFUSALS: [&str; 2] = ["max_connections", "max_connections_per_client"];

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
    queue_depth: Family<SubscriptionLabels, Gauge>,
    oldest_pending: Family<SubscriptionLabels, Gauge<f64, AtomicU64>>,
    circuit_open: Family<SubscriptionLabels, Gauge>,
    filter_errors: Family<SubscriptionLabels, Counter>,
    ready: Family<ReadyGaugeLabels, Gauge>,
    /// The reason each exported `subscription_ready` series carries, to replace it on a change.
    ready_reasons: Mutex<HashMap<SubscriptionLabels, &'static str>>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    status_write_failures: Family<WriterLabels, Counter>,
    ready_process: Gauge,
    api_requests: Family<MethodLabels, Counter>,
    event_cache_bytes: Gauge,
    store_free_bytes: Gauge,
    store_errors: Family<ErrorLabels, Counter>,
    status_writes_deferred: Counter,
    status_staleness: Gauge<f64, AtomicU64>,
    connections_open: Family<ServerLabels, Gauge>,
    connections_refused: Family<RefusedLabels, Counter>,
    read_timeouts: Family<ReadTimeoutLabels, Counter>,
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
            "Delivery attempts per subscription, by outcome and HTTP status class",
            deliveries.clone(),
        );
        let attempt_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "attempt_duration_seconds",
            "Duration of delivery attempts",
            attempt_duration.clone(),
        );
        let queue_depth = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Jobs queued or in flight per subscription (exported by the subscription's owner)",
            queue_depth.clone(),
        );
        let oldest_pending = Family::<SubscriptionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "oldest_pending_job_age_seconds",
            "Age of the oldest event waiting for an attempt (due or backing off) per subscription; 0 when none waits",
            oldest_pending.clone(),
        );
        let circuit_open = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "circuit_open",
            "1 while a subscription's circuit breaker is open (nothing is sent until a probe), else 0",
            circuit_open.clone(),
        );
        let filter_errors = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "filter_errors",
            "Events a subscription's CEL filter failed on (a missing field, a type mismatch, a result that is not a bool): not delivered to it",
            filter_errors.clone(),
        );
        let ready = Family::<ReadyGaugeLabels, Gauge>::default();
        registry.register(
            "subscription_ready",
            "1 while a subscription's Ready condition is True, else 0; reason: the condition's \
             (exported by the subscription's owner)",
            ready.clone(),
        );
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Events given up on per subscription, by what became of them",
            dead_letters.clone(),
        );
        let status_write_failures = Family::<WriterLabels, Counter>::default();
        registry.register(
            "status_write_failures",
            "Subscription status writes the API server refused or did not answer, by writer \
             (controller: conditions; delivery: delivery results)",
            status_write_failures.clone(),
        );
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
        let connections_open = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open per HTTP server (ingest, operations)",
            connections_open.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused with a 503 because the server (--max-connections) or the client's \
             address (--max-connections-per-client) held its maximum",
            connections_refused.clone(),
        );
        let read_timeouts = Family::<ReadTimeoutLabels, Counter>::default();
        registry.register(
            "read_timeouts",
            "Requests a client did not send within --read-timeout, by part: headers (the connection \
             is closed; this includes connections idle that long between requests) or body (408)",
            read_timeouts.clone(),
        );
        // Counters a failure or a first event may be the first to touch start at zero, so that
        // their family is declared from the start and rate() sees the first increase.
        for error in ["kube_api", "store", "failed_event_kube_api", "failed_event_store"] {
            drop(reconcile_errors.get_or_create(&ErrorLabels { error }));
        }
        for writer in ["controller", "delivery"] {
            drop(status_write_failures.get_or_create(&WriterLabels { writer }));
        }
        for duplicate in ["false", "true"] {
            drop(events_accepted.get_or_create(&AcceptLabels { duplicate }));
        }
        let ready_process = Gauge::default();
        registry.register(
            "ready",
            "1 while this replica is ready (its /readyz answers 200: watches synced, subscriptions \
             loaded, store reachable), else 0",
            ready_process.clone(),
        );
        Self {
            connections_open,
            connections_refused,
            read_timeouts,
            ready_process,
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
            oldest_pending,
            circuit_open,
            filter_errors,
            ready,
            ready_reasons: Mutex::default(),
            dead_letters,
            status_write_failures,
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

/// The connection counters of one HTTP server, looked up once.
#[derive(Clone, Debug)]
pub struct ConnectionCounters {
    open: Gauge,
    refused: [(&'static str, Counter); 2],
    header_timeouts: Counter,
    body_timeouts: Counter,
}

impl ConnectionCounters {
    /// A connection was admitted.
    pub fn opened(&self) {
        self.open.inc();
    }

    /// An admitted connection closed.
    pub fn closed(&self) {
        self.open.dec();
    }

    /// A connection was refused; `reason` is one of `REFUSALS`.
    pub fn refused(&self, reason: &'static str) {
        if let Some((_, counter)) = self.refused.iter().find(|(r, _)| *r == reason) {
            counter.inc();
        }
    }

    /// A connection was closed because its request's headers did not arrive in time.
    pub fn header_timed_out(&self) {
        self.header_timeouts.inc();
    }

    /// A request's body did not arrive in time.
    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
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

    /// Count a finished delivery attempt to `namespace`/`name` by the endpoint's HTTP status
    /// (`None`: no answer).
    pub fn attempt_finished(
        &self,
        namespace: &str,
        name: &str,
        status: Option<u16>,
        duration: std::time::Duration,
    ) {
        let (outcome, class) = match status {
            Some(code) => (
                if (200..300).contains(&code) { "success" } else { "failure" },
                match code {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
            ),
            None => ("failure", "none"),
        };
        let labels = OutcomeLabels { namespace: namespace.into(), name: name.into(), outcome, class };
        self.deliveries.get_or_create(&labels).inc();
        self.attempt_duration.observe(duration.as_secs_f64());
    }

    /// Set a subscription's queue depth and the age of its oldest waiting event.
    pub fn set_queue(&self, namespace: &str, name: &str, depth: i64, oldest: std::time::Duration) {
        let labels = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        self.queue_depth.get_or_create(&labels).set(depth);
        self.oldest_pending.get_or_create(&labels).set(oldest.as_secs_f64());
    }

    /// Stop reporting a subscription's queue (its dispatcher stopped here).
    pub fn forget_queue(&self, namespace: &str, name: &str) {
        let labels = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        self.queue_depth.remove(&labels);
        self.oldest_pending.remove(&labels);
        self.circuit_open.remove(&labels);
    }

    /// Count an event a subscription's CEL filter failed on.
    pub fn filter_failed(&self, namespace: &str, name: &str) {
        let labels = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        self.filter_errors.get_or_create(&labels).inc();
    }

    /// Whether a subscription's circuit breaker is open.
    pub fn set_circuit_open(&self, namespace: &str, name: &str, open: bool) {
        let labels = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        self.circuit_open.get_or_create(&labels).set(i64::from(open));
    }

    /// Whether a subscription this replica owns is Ready, and the condition's reason.
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool, reason: &'static str) {
        let sub = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        let labels = |reason| ReadyGaugeLabels { namespace: namespace.into(), name: name.into(), reason };
        let mut reasons = self.ready_reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = reasons.insert(sub, reason).filter(|old| *old != reason) {
            self.ready.remove(&labels(old));
        }
        self.ready.get_or_create(&labels(reason)).set(i64::from(ready));
    }

    /// Stop reporting a subscription's readiness (deleted, or owned by another replica now).
    pub fn forget_ready(&self, namespace: &str, name: &str) {
        let sub = SubscriptionLabels { namespace: namespace.into(), name: name.into() };
        let old = self.ready_reasons.lock().unwrap_or_else(|e| e.into_inner()).remove(&sub);
        if let Some(reason) = old {
            self.ready.remove(&ReadyGaugeLabels { namespace: namespace.into(), name: name.into(), reason });
        }
    }

    /// Forget every series of a deleted subscription.
    pub fn forget_subscription(&self, namespace: &str, name: &str) {
        self.forget_ready(namespace, name);
        self.forget_queue(namespace, name);
        self.filter_errors.remove(&SubscriptionLabels { namespace: namespace.into(), name: name.into() });
        let (namespace, name) = (namespace.to_string(), name.to_string());
        for (outcome, class) in OUTCOMES {
            let (namespace, name) = (namespace.clone(), name.clone());
            self.deliveries.remove(&OutcomeLabels { namespace, name, outcome, class });
        }
        for disposition in DISPOSITIONS {
            let (namespace, name) = (namespace.clone(), name.clone());
            self.dead_letters.remove(&DeadLetterLabels { namespace, name, disposition });
        }
    }

    /// Count an event of `namespace`/`name` given up on, by what became of it (one of
    /// `DISPOSITIONS`): `queued` for a FailedEvent, `dropped`, `created`, `capped`, `orphaned`,
    /// `unreadable`.
    pub fn dead_lettered(&self, namespace: &str, name: &str, disposition: &'static str) {
        let labels = DeadLetterLabels { namespace: namespace.into(), name: name.into(), disposition };
        self.dead_letters.get_or_create(&labels).inc();
    }

    /// Whether this replica is ready (set as `/metrics` is read).
    pub fn set_process_ready(&self, ready: bool) {
        self.ready_process.set(i64::from(ready));
    }

    /// Count a status write that failed; `writer` is `controller` or `delivery`.
    pub fn status_write_failed(&self, writer: &'static str) {
        self.status_write_failures.get_or_create(&WriterLabels { writer }).inc();
    }

    /// The connection counters of the HTTP server `server` (`ingest`, `operations`), its
    /// series declared at zero.
    pub fn connections(&self, server: &'static str) -> ConnectionCounters {
        let refused = REFUSALS.map(|reason| {
            (reason, self.connections_refused.get_or_create(&RefusedLabels { server, reason }).clone())
        });
        let timeout = |part| self.read_timeouts.get_or_create(&ReadTimeoutLabels { server, part }).clone();
        ConnectionCounters {
            open: self.connections_open.get_or_create(&ServerLabels { server }).clone(),
            refused,
            header_timeouts: timeout("headers"),
            body_timeouts: timeout("body"),
        }
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
mod tests;
