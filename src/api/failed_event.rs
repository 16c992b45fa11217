//! `FailedEvent`: one event that one subscription could not deliver (a dead letter).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::event::limits;

/// The longest error description kept in a FailedEvent (`spec.failure.lastError`), in bytes.
pub const MAX_ERROR_LENGTH: usize = 1024;

/// A dead letter: one event one subscription could not deliver. Created by the operator.
// kube's printcolumn(...) repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "FailedEvent",
    namespaced,
    status = "FailedEventStatus",
    shortname = "fev",
    category = "hookline",
    derive = "PartialEq",
    doc = "A dead letter: one event that one subscription could not deliver.",
    printcolumn(name = "Subscription", type_ = "string", json_path = ".spec.subscription"),
    printcolumn(name = "Event Type", type_ = "string", json_path = ".spec.event.type"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.failure.reason"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".spec.failure.attempts"),
    printcolumn(name = "Last Status", type_ = "integer", json_path = ".spec.failure.lastStatusCode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "FailedEvent spec is immutable"}
]))]
pub struct FailedEventSpec {
    /// Name of the WebhookSubscription (same namespace) that could not deliver the event.
    #[schemars(length(min = 1, max = 253))]
    pub subscription: String,
    /// The undelivered CloudEvent in its JSON form.
    pub event: CloudEventRecord,
    /// Why and how delivery failed.
    pub failure: FailureRecord,
}

/// A CloudEvent 1.0 in its JSON format.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CloudEventRecord {
    /// CloudEvents spec version (`1.0`).
    #[schemars(length(max = 8))]
    pub specversion: String,
    /// Event id, unique per source.
    #[schemars(length(max = limits::ID))]
    pub id: String,
    /// Context in which the event happened.
    #[schemars(length(max = limits::URI))]
    pub source: String,
    /// Event type.
    #[serde(rename = "type")]
    #[schemars(length(max = limits::TYPE))]
    pub type_: String,
    /// Subject of the event in the context of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URI))]
    pub subject: Option<String>,
    /// When the event happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TIME))]
    pub time: Option<String>,
    /// Media type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MEDIA_TYPE))]
    pub datacontenttype: Option<String>,
    /// Schema that `data` adheres to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URI))]
    pub dataschema: Option<String>,
    /// The payload, when it is JSON or text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub data: Option<serde_json::Value>,
    /// The payload, base64-encoded, when it is binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::DATA_BASE64))]
    pub data_base64: Option<String>,
    /// Extension attributes, as strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::EXTENSIONS), inner(length(max = limits::URI)))]
    pub extensions: BTreeMap<String, String>,
}

fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The payload, when it is JSON or text.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Why delivery was given up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureReason {
    /// `retryPolicy.maxAttempts` attempts failed.
    MaxAttemptsExceeded,
    /// `retryPolicy.eventTTL` passed before a successful attempt.
    #[serde(rename = "TTLExpired")]
    TtlExpired,
    /// The endpoint answered 400 or 413, which are not retried.
    NonRetryableResponse,
    /// The endpoint answered 410 Gone.
    EndpointGone,
}

/// The failure record of a dead letter. Never holds a secret or a signed header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// Why delivery was given up.
    pub reason: FailureReason,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_time: Option<Time>,
    /// When the last attempt was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// HTTP status of the last attempt, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// Short description of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ERROR_LENGTH))]
    pub last_error: Option<String>,
}

/// What the operator did with this FailedEvent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedEventStatus {
    /// The outcome of the last replay request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStatus>,
}

/// The outcome of a replay request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    /// `Pending`, `Failed`, `SubscriptionGone` or `SubscriptionSuspended`.
    pub outcome: ReplayOutcome,
    /// When the outcome was recorded.
    pub time: Time,
    /// Attempts made by this replay.
    #[serde(default)]
    pub attempts: u32,
    /// HTTP status of the last replay attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// Human-readable details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Outcome of a replay.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReplayOutcome {
    /// The event is queued for redelivery.
    Pending,
    /// Redelivery failed again.
    Failed,
    /// The subscription no longer exists.
    SubscriptionGone,
    /// The subscription is suspended; replay waits for resume.
    SubscriptionSuspended,
}
