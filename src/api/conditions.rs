//! Standard `metav1.Condition` handling shared by Hookline's status types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator, json_schema};

/// The condition types a `WebhookSubscription` reports.
pub mod condition_type {
    /// The endpoint has proven it wants the traffic.
    pub const ENDPOINT_VERIFIED: &str = "EndpointVerified";
    /// Deliveries are succeeding.
    pub const HEALTHY: &str = "Healthy";
    /// The subscription delivers events.
    pub const READY: &str = "Ready";
}

/// Machine-readable reasons of Hookline's conditions (CamelCase, as Kubernetes requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The endpoint proved ownership (or validation is off).
    Verified,
    /// The ownership handshake is waiting for the endpoint.
    Pending,
    /// The ownership handshake failed.
    ValidationFailed,
    /// The endpoint resolves to an address Hookline never sends to.
    EndpointBlocked,
    /// Deliveries succeed.
    Delivering,
    /// Deliveries fail in a row.
    DeliveryFailing,
    /// `Healthy`: the endpoint answered 410 Gone.
    EndpointGone,
    /// `Healthy`: the circuit breaker is open: nothing is sent until the next probe.
    CircuitOpen,
    /// Events are delivered.
    Active,
    /// Events wait until the endpoint is verified.
    AwaitingValidation,
    /// `spec.suspend` holds events.
    Suspended,
    /// `spec.expiresAt` has passed.
    Expired,
    /// `Ready`: delivery stopped (a 410 Gone, or failing for `retryPolicy.disableAfter`) until
    /// the spec or the annotation `hookline.dev/enable` changes.
    Disabled,
    /// The spec breaks a rule the schema could not check.
    InvalidSpec,
    /// The signing Secret the spec names does not exist or holds no key.
    SigningSecretMissing,
    /// An EventType's schema compiles and its example matches.
    Valid,
    /// An EventType's schema does not compile (or fetches something).
    InvalidSchema,
    /// An EventType's example does not match its schema.
    InvalidExample,
    /// An older EventType of the namespace names the same type.
    DuplicateType,
}

impl Reason {
    /// The reason as it appears in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Verified => "Verified",
            Reason::Pending => "Pending",
            Reason::ValidationFailed => "ValidationFailed",
            Reason::EndpointBlocked => "EndpointBlocked",
            Reason::Delivering => "Delivering",
            Reason::DeliveryFailing => "DeliveryFailing",
            Reason::EndpointGone => "EndpointGone",
            Reason::CircuitOpen => "CircuitOpen",
            Reason::Active => "Active",
            Reason::AwaitingValidation => "AwaitingValidation",
            Reason::Suspended => "Suspended",
            Reason::Expired => "Expired",
            Reason::Disabled => "Disabled",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SigningSecretMissing => "SigningSecretMissing",
            Reason::Valid => "Valid",
            Reason::InvalidSchema => "InvalidSchema",
            Reason::InvalidExample => "InvalidExample",
            Reason::DuplicateType => "DuplicateType",
        }
    }
}

/// Insert or update a condition, moving `lastTransitionTime` only when its status changes.
///
/// Returns the condition list sorted by type so that equal statuses serialize identically.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.as_str().to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.as_str().to_string(),
            message,
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Schema of a condition list: a list-map keyed by `type`, so server-side apply merges by type.
pub fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Standard conditions (metav1.Condition), one per type.",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Type of the condition."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                           "description": "Status of the condition."},
                "reason": {"type": "string", "description": "CamelCase reason for the last transition."},
                "message": {"type": "string", "description": "Human-readable details."},
                "lastTransitionTime": {"type": "string", "format": "date-time",
                                       "description": "When the status last changed."},
                "observedGeneration": {"type": "integer", "format": "int64",
                                       "description": "The generation the condition was computed from."}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conds = Vec::new();
        set_condition(&mut conds, "Ready", false, Reason::Pending, "a", Some(1), &at(10));
        set_condition(&mut conds, "Ready", false, Reason::AwaitingValidation, "b", Some(2), &at(20));
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, "AwaitingValidation");
        set_condition(&mut conds, "Ready", true, Reason::Active, "c", Some(2), &at(30));
        assert_eq!(conds[0].last_transition_time, at(30));
        assert_eq!(conds[0].status, "True");
    }

    #[test]
    fn conditions_are_kept_sorted_by_type() {
        let mut conds = Vec::new();
        for t in ["Ready", "Healthy", "EndpointVerified"] {
            set_condition(&mut conds, t, true, Reason::Active, "", None, &at(1));
        }
        let types: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["EndpointVerified", "Healthy", "Ready"]);
    }
}
