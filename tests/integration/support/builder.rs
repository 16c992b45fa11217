//! Subscriptions for scenario tests, built in the test's own words:
//! `WebhookSubscription::test("orders", &rx.url).for_types(&["order.*"]).structured()`.

use hookline::api::{DeliveryMode, EventFilter, Ordering, SecretRef, SigningSpec, WebhookSubscription};

/// Builder methods on [`WebhookSubscription`] for tests (a trait, since the type is the library's).
pub trait TestSubscription: Sized {
    /// Subscription `name` to `url`: every event type, no ownership handshake (tests run Hookline
    /// with `--allow-unverified-endpoints`), every other field at its default.
    fn test(name: &str, url: &str) -> Self;
    /// Only these event types.
    fn for_types(self, types: &[&str]) -> Self;
    /// Only events from `source` whose subject starts with `subject_prefix`.
    fn filtered(self, source: &str, subject_prefix: &str) -> Self;
    /// Deliver in structured mode.
    fn structured(self) -> Self;
    /// At most `n` attempts.
    fn max_attempts(self, n: u32) -> Self;
    /// Backoff from `initial` up to `max` (Go durations, e.g. `100ms`).
    fn backoff(self, initial: &str, max: &str) -> Self;
    /// Backoff from `initial`, up to the default maximum.
    fn initial_backoff(self, initial: &str) -> Self;
    /// Fail fast: two attempts, 100 ms apart, and no circuit breaker.
    fn failing_fast(self) -> Self;
    /// No circuit breaker: failing attempts go on at the retry policy's pace.
    fn without_circuit_breaker(self) -> Self;
    /// At most `n` requests in flight.
    fn concurrency(self, n: u32) -> Self;
    /// A request times out after `seconds`.
    fn timeout(self, seconds: u32) -> Self;
    /// Sign with the keys in Secret `name`.
    fn signed_with(self, secret: &str) -> Self;
    /// Undeliverable events are dropped, not kept as FailedEvents.
    fn without_dead_letters(self) -> Self;
    /// Created suspended.
    fn suspended(self) -> Self;
    /// Delivered in this order.
    fn ordered(self, ordering: Ordering) -> Self;
    /// Only events this CEL expression (`spec.filter.cel`) returns true for.
    fn cel(self, expression: &str) -> Self;
}

impl TestSubscription for WebhookSubscription {
    fn test(name: &str, url: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": name},
            "spec": {"eventTypes": ["*"], "endpoint": {"url": url}, "validation": {"method": "None"}},
        }))
        .expect("a test subscription")
    }

    fn for_types(mut self, types: &[&str]) -> Self {
        self.spec.event_types = types.iter().map(|t| t.to_string()).collect();
        self
    }

    fn filtered(mut self, source: &str, subject_prefix: &str) -> Self {
        self.spec.filter = Some(EventFilter {
            source: Some(source.into()),
            subject_prefix: Some(subject_prefix.into()),
            cel: None,
        });
        self
    }

    fn structured(mut self) -> Self {
        self.spec.delivery.mode = DeliveryMode::Structured;
        self
    }

    fn max_attempts(mut self, n: u32) -> Self {
        self.spec.retry_policy.max_attempts = n;
        self
    }

    fn backoff(mut self, initial: &str, max: &str) -> Self {
        self.spec.retry_policy.initial_backoff = initial.into();
        self.spec.retry_policy.max_backoff = max.into();
        self
    }

    fn initial_backoff(mut self, initial: &str) -> Self {
        self.spec.retry_policy.initial_backoff = initial.into();
        self
    }

    fn failing_fast(self) -> Self {
        // Given up on after two quick attempts, however many fail in a row: no circuit breaker
        // to hold them back.
        self.without_circuit_breaker().max_attempts(2).backoff("100ms", "200ms")
    }

    fn without_circuit_breaker(mut self) -> Self {
        self.spec.delivery.circuit_breaker.consecutive_failures = 0;
        self
    }

    fn concurrency(mut self, n: u32) -> Self {
        self.spec.delivery.max_concurrency = n;
        self
    }

    fn timeout(mut self, seconds: u32) -> Self {
        self.spec.endpoint.timeout_seconds = seconds;
        self
    }

    fn signed_with(mut self, secret: &str) -> Self {
        self.spec.signing = Some(SigningSpec { secret_ref: SecretRef { name: secret.into() } });
        self
    }

    fn without_dead_letters(mut self) -> Self {
        self.spec.dead_letter.enabled = false;
        self
    }

    fn suspended(mut self) -> Self {
        self.spec.suspend = true;
        self
    }

    fn ordered(mut self, ordering: Ordering) -> Self {
        self.spec.delivery.ordering = ordering;
        self
    }

    fn cel(mut self, expression: &str) -> Self {
        self.spec.filter.get_or_insert_with(EventFilter::default).cel = Some(expression.into());
        self
    }
}
