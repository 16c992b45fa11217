//! `WebhookSubscription`: who wants which events, where.
//!
//! Over 400 lines on purpose: it is one resource's spec, and each field's doc comment is its
//! `kubectl explain` and its bounds and CEL rules its schema; split, the schema would be read in
//! pieces.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::conditions_schema;

/// A subscription of one HTTP endpoint to a set of CloudEvent types published in its namespace.
// kube's printcolumn(...) repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    status = "WebhookSubscriptionStatus",
    shortname = "whsub",
    category = "hookline",
    derive = "PartialEq",
    doc = "A subscription of one HTTP endpoint to a set of CloudEvent types published in its namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.endpoint.url"),
    printcolumn(name = "Last Delivery", type_ = "date", json_path = ".status.lastDelivery.time"),
    printcolumn(name = "Last Status", type_ = "integer", json_path = ".status.lastDelivery.statusCode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// Event types to receive: an exact type (`order.created`), a prefix wildcard (`order.*`) or `*`.
    #[schemars(
        length(min = 1, max = 100),
        inner(length(min = 1, max = 253), regex(pattern = r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]*(\.\*)?)$"))
    )]
    pub event_types: Vec<String>,

    /// Optional CloudEvents attribute filters; an event must match all that are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilter>,

    /// Where events are delivered.
    pub endpoint: Endpoint,

    /// How events are put on the wire and how hard the endpoint is driven.
    #[serde(default)]
    pub delivery: DeliverySpec,

    /// Where the Standard Webhooks signing secret lives. Absent: the operator creates `<name>-signing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,

    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry_policy: RetryPolicy,

    /// What happens to events that cannot be delivered.
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,

    /// RFC 3339 time after which the subscription stops delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Pause delivery. Events are kept and delivered on resume, within their TTL.
    #[serde(default)]
    pub suspend: bool,

    /// How the endpoint proves it wants the traffic before any event is sent.
    #[serde(default)]
    pub validation: ValidationSpec,
}

/// CloudEvents attribute filters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    /// Only events whose `source` attribute equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub source: Option<String>,
    /// Only events whose `subject` attribute starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub subject_prefix: Option<String>,
    /// Only events for which this CEL expression returns true. It sees `event`: the attributes
    /// (`event.id`, `event.source`, `event.type`, `event.subject`, `event.time` as a string,
    /// `event.datacontenttype`, `event.dataschema`), every extension by name, and `event.data`
    /// (parsed JSON, or a string for text data). An absent attribute is absent: test it with
    /// `has(event.subject)`. Example: `event.data.amount > 100 && event.subject.startsWith("eu/")`.
    /// At most 1024 bytes; `all`, `exists` and `exists_one` may not be nested, and `map` and
    /// `filter` are not allowed (their cost grows with the square of the list). An expression that
    /// does not compile makes the subscription `Ready=False/InvalidSpec`; one that fails on an
    /// event (a missing field, a type mismatch, a result that is not a bool) does not match it,
    /// counted in `hookline_filter_errors_total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_CEL_LENGTH))]
    pub cel: Option<String>,
}

/// The longest `spec.filter.cel`, in bytes.
pub const MAX_CEL_LENGTH: usize = 1024;

/// The HTTP endpoint events are POSTed to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.headers) || self.headers.all(k, !(k.lowerAscii() in ['content-type', 'content-length', 'host', 'transfer-encoding', 'connection', 'traceparent', 'tracestate']) && !k.lowerAscii().startsWith('ce-') && !k.lowerAscii().startsWith('webhook-'))",
        "message": "endpoint.headers must not set reserved headers (Content-Type, Content-Length, Host, Transfer-Encoding, Connection, traceparent, tracestate, ce-*, webhook-*)",
        "fieldPath": ".headers"
    },
    {
        "rule": "!has(self.headers) || self.headers.all(k, k.matches('^[A-Za-z0-9!#$%&\\'*+.^_`|~-]+$'))",
        "message": "endpoint.headers keys must be valid HTTP header names",
        "fieldPath": ".headers"
    },
    {
        "rule": "!has(self.caBundleFrom) || self.url.startsWith('https://')",
        "message": "endpoint.caBundleFrom needs an https:// url",
        "fieldPath": ".caBundleFrom"
    }
]))]
pub struct Endpoint {
    /// Where events are POSTed: `https://` (plain `http://` only when the operator allows it).
    #[schemars(length(min = 8, max = 1000), regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"))]
    pub url: String,

    /// Static extra headers sent with every request. Not for secrets: use `headersFrom`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32), inner(length(max = 4096)))]
    pub headers: BTreeMap<String, String>,

    /// A Secret whose keys become headers (API keys, bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from: Option<HeadersFrom>,

    /// CA certificates (PEM) to verify an `https://` endpoint's certificate with, instead of the
    /// system's trusted roots: for endpoints behind a private CA. TLS verification is never off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_from: Option<CaBundleFrom>,

    /// Per-attempt timeout in seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: u32,
}

/// Headers taken from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadersFrom {
    /// The Secret (in the subscription's namespace) whose keys become header names.
    pub secret_ref: SecretRef,
}

/// A CA bundle taken from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleFrom {
    /// The Secret (in the subscription's namespace) that holds the bundle.
    pub secret_ref: SecretRef,
    /// The key whose value is the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// A reference to a Secret in the subscription's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// The CloudEvents HTTP binding used for deliveries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeliveryMode {
    /// Attributes in `ce-*` headers, data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// Wire format and pressure on the endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// CloudEvents HTTP binding: `Binary` or `Structured`.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Requests in flight to this endpoint at once.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrency: u32,
    /// Optional cap on requests per second to this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub rate_limit_per_second: Option<u32>,
    /// Stop sending to an endpoint that keeps failing; probe it now and then.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,
    /// In what order events go out: `Unordered` (default), `PartitionKey` (one at a time per
    /// CloudEvents `partitionkey`, in the order they were accepted) or `Strict` (one at a time).
    #[serde(default)]
    pub ordering: Ordering,
}

/// The order of deliveries to one subscription.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Ordering {
    /// Up to `maxConcurrency` at once, in any order (retries overtake nothing).
    #[default]
    Unordered,
    /// Events carrying the same CloudEvents `partitionkey` extension go one at a time, in the
    /// order they were accepted: a failing event holds back only the later events of its own key
    /// until it is delivered, dead-lettered or expired. Other keys keep flowing up to
    /// `maxConcurrency`; events without the extension are unordered.
    PartitionKey,
    /// One at a time for the whole subscription, in the order the events were accepted.
    Strict,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Binary,
            max_concurrency: default_max_concurrency(),
            rate_limit_per_second: None,
            circuit_breaker: CircuitBreakerSpec::default(),
            ordering: Ordering::Unordered,
        }
    }
}

/// The circuit breaker: after `consecutiveFailures` failed attempts in a row nothing is sent to
/// the endpoint (jobs wait without using up attempts; their TTL still runs) until, after
/// `cooldown`, one probe goes out: success closes the breaker, failure opens it again for twice
/// as long (up to `maxCooldown`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.cooldown) >= duration('1s') && duration(self.cooldown) <= duration('1h')",
        "message": "delivery.circuitBreaker.cooldown must be between 1s and 1h",
        "fieldPath": ".cooldown"
    },
    {
        "rule": "duration(self.maxCooldown) >= duration('1s') && duration(self.maxCooldown) <= duration('24h')",
        "message": "delivery.circuitBreaker.maxCooldown must be between 1s and 24h",
        "fieldPath": ".maxCooldown"
    },
    {
        "rule": "duration(self.maxCooldown) >= duration(self.cooldown)",
        "message": "delivery.circuitBreaker.maxCooldown must not be shorter than cooldown",
        "fieldPath": ".maxCooldown"
    }
]))]
pub struct CircuitBreakerSpec {
    /// Failed attempts in a row that open the breaker (0 to 1000); 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: u32,
    /// How long the breaker stays open before the first probe (Go duration, 1s to 1h).
    #[serde(default = "default_cooldown")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub cooldown: String,
    /// The longest it stays open: the cooldown doubles after each failed probe up to this (Go
    /// duration, 1s to 24h).
    #[serde(default = "default_max_cooldown")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_cooldown: String,
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            cooldown: default_cooldown(),
            max_cooldown: default_max_cooldown(),
        }
    }
}

/// Where the signing secret lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningSpec {
    /// A Secret holding the signing secret(s) (`whsec_…`); two keys during a rotation.
    pub secret_ref: SecretRef,
}

/// Retry schedule: exponential backoff with ±20% jitter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.maxBackoff) >= duration(self.initialBackoff)",
        "message": "retryPolicy.maxBackoff must not be shorter than retryPolicy.initialBackoff",
        "fieldPath": ".maxBackoff"
    },
    {
        "rule": "duration(self.eventTTL) >= duration('1m') && duration(self.eventTTL) <= duration('72h')",
        "message": "retryPolicy.eventTTL must be between 1m and 72h",
        "fieldPath": ".eventTTL"
    },
    {
        "rule": "duration(self.initialBackoff) >= duration('100ms') && duration(self.maxBackoff) <= duration('24h')",
        "message": "retryPolicy.initialBackoff must be at least 100ms and maxBackoff at most 24h",
        "fieldPath": ".initialBackoff"
    },
    {
        "rule": "duration(self.disableAfter) == duration('0s') || (duration(self.disableAfter) >= duration('10s') && duration(self.disableAfter) <= duration('720h'))",
        "message": "retryPolicy.disableAfter must be 0s (never) or between 10s and 720h",
        "fieldPath": ".disableAfter"
    }
]))]
pub struct RetryPolicy {
    /// Attempts before the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Give up on an event this long after it was accepted (Go duration, 1m to 72h).
    #[serde(default = "default_event_ttl", rename = "eventTTL")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub event_ttl: String,
    /// Backoff before the second attempt (Go duration).
    #[serde(default = "default_initial_backoff")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub initial_backoff: String,
    /// Longest backoff between attempts; `Retry-After` is honoured up to this (Go duration).
    #[serde(default = "default_max_backoff")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_backoff: String,
    /// Disable the subscription when no delivery succeeded for this long while attempts kept
    /// failing (`Ready=False/Disabled`; events are kept until their TTL). Set the annotation
    /// `hookline.dev/enable` to a new value, or change the spec, to enable it again. Go duration,
    /// `0s` (never) or 10s to 720h.
    #[serde(default = "default_disable_after")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub disable_after: String,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            event_ttl: default_event_ttl(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            disable_after: default_disable_after(),
        }
    }
}

/// Dead-lettering of undeliverable events.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Keep undeliverable events as FailedEvent resources (otherwise they are dropped and counted).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The endpoint ownership handshake.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ValidationMethod {
    /// POST a `dev.hookline.subscription.validation` CloudEvent (Azure Event Grid's contract).
    #[default]
    Event,
    /// The CloudEvents HTTP webhook abuse-protection handshake (`OPTIONS`).
    Options,
    /// No handshake; accepted only when the operator runs with `--allow-unverified-endpoints`.
    None,
}

/// How the endpoint is verified.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSpec {
    /// `Event` (default), `Options` or `None`.
    #[serde(default)]
    pub method: ValidationMethod,
}

/// What Hookline observed about a subscription. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `EndpointVerified`, `Healthy`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The most recent delivery attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<LastDelivery>,
    /// When the next retry is due, if one is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Time>,
    /// Delivery counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_stats: Option<DeliveryStats>,
    /// The Secret the signing keys are read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretRef>,
    /// FailedEvents kept for this subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<DeadLetterStats>,
    /// Delivery stopped: the endpoint answered 410 Gone, or kept failing for
    /// `retryPolicy.disableAfter`. It applies to one generation of the spec and one value of the
    /// annotation `hookline.dev/enable`; a new value of either enables delivery again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

/// Why and when delivery was disabled (see [`WebhookSubscriptionStatus::disabled`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disabled {
    /// `EndpointGone` or `FailingTooLong`.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// When.
    pub time: Time,
    /// The `metadata.generation` it applies to.
    pub generation: i64,
    /// The value of the annotation `hookline.dev/enable` then (absent: not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_annotation: Option<String>,
}

impl Disabled {
    /// Whether it still holds for a subscription at `generation` whose enable annotation is
    /// `enable`: a new value of either enables delivery again.
    pub fn applies_to(&self, generation: i64, enable: Option<&str>) -> bool {
        self.generation == generation && self.enable_annotation.as_deref() == enable
    }
}

/// One delivery attempt, as shown in status. Never holds a secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDelivery {
    /// The CloudEvent `id`.
    pub event_id: String,
    /// The CloudEvent `type`.
    pub event_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the attempt finished.
    pub time: Time,
    /// Whether the endpoint answered 2xx.
    pub success: bool,
    /// HTTP status code, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Duration of the attempt in milliseconds.
    pub duration_ms: u64,
    /// Short description of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Delivery counters since the operator started tracking this subscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    /// Events delivered successfully.
    pub delivered: u64,
    /// Attempts that failed.
    pub failed_attempts: u64,
    /// Events given up on.
    pub dead_lettered: u64,
    /// Events waiting for delivery.
    pub pending: u64,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// Since when attempts have kept failing (the first failure after the last success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Time>,
}

/// FailedEvents of this subscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterStats {
    /// FailedEvents that exist now.
    pub count: u64,
    /// Dead letters dropped because the cap was reached or dead-lettering is off.
    pub dropped: u64,
}

fn default_timeout_seconds() -> u32 {
    15
}
fn default_max_concurrency() -> u32 {
    8
}
fn default_max_attempts() -> u32 {
    30
}
fn default_disable_after() -> String {
    "120h".into()
}
fn default_event_ttl() -> String {
    "24h".into()
}
fn default_initial_backoff() -> String {
    "5s".into()
}
fn default_max_backoff() -> String {
    "1h".into()
}
fn default_true() -> bool {
    true
}
fn default_consecutive_failures() -> u32 {
    10
}
fn default_cooldown() -> String {
    "30s".into()
}
fn default_max_cooldown() -> String {
    "10m".into()
}
