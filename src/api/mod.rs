//! The `hookline.dev/v1alpha1` API: the custom resources users apply and read.

mod conditions;
mod event_type;
mod failed_event;
#[cfg(test)]
pub(crate) mod fixtures;
mod subscription;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub use conditions::{Reason, condition_type, conditions_schema, set_condition};
pub use event_type::{EventType, EventTypeSpec, EventTypeStatus, MAX_DESCRIPTION_LENGTH};
pub use failed_event::{
    CloudEventRecord, FailedEvent, FailedEventSpec, FailedEventStatus, FailureReason, FailureRecord,
    MAX_ERROR_LENGTH, ReplayOutcome, ReplayStatus,
};
pub use subscription::{
    DeadLetterSpec, DeadLetterStats, DeliveryMode, DeliverySpec, DeliveryStats, Disabled, Endpoint,
    EventFilter, HeadersFrom, LastDelivery, MAX_CEL_LENGTH, Ordering, RetryPolicy, SecretRef, SigningSpec,
    ValidationMethod, ValidationSpec, WebhookSubscription, WebhookSubscriptionSpec,
    WebhookSubscriptionStatus,
};

/// The API group of every Hookline resource.
pub const GROUP: &str = "hookline.dev";

/// The field manager Hookline uses for every write, so server-side apply knows what it owns.
pub const FIELD_MANAGER: &str = "hookline";

/// Labels Hookline puts on objects it creates.
pub mod labels {
    /// Marks objects created by Hookline.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "hookline";
    /// The subscription an object belongs to.
    pub const SUBSCRIPTION: &str = "hookline.dev/subscription";
    /// The event type of a FailedEvent.
    pub const EVENT_TYPE: &str = "hookline.dev/event-type";
}

/// Annotations users set to ask Hookline for something.
pub mod annotations {
    /// Set to a new value to send a test event.
    pub const TEST_EVENT: &str = "hookline.dev/test-event";
    /// Set to a new value to force a new endpoint verification attempt.
    pub const REVALIDATE: &str = "hookline.dev/revalidate";
    /// Set to `true` on a FailedEvent to redeliver it.
    pub const REPLAY: &str = "hookline.dev/replay";
    /// Set to a new value to enable a disabled subscription again.
    pub const ENABLE: &str = "hookline.dev/enable";
}

/// Hookline's CRDs, as they are installed: the derived schemas with integer formats that
/// Kubernetes knows.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    [WebhookSubscription::crd(), FailedEvent::crd(), EventType::crd()].map(with_kubernetes_formats).into()
}

/// Produce the CRDs as one multi-document YAML stream, the content of `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// schemars names Rust's unsigned integers (`uint16`, `uint32`, `uint64`), formats an API server
/// does not know and warns about at install. Each becomes the smallest signed format Kubernetes
/// knows that holds all its values (`minimum: 0` stays).
fn with_kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(format)) = map.get_mut("format") {
                    match format.as_str() {
                        "uint8" | "uint16" => *format = "int32".into(),
                        "uint32" | "uint64" => *format = "int64".into(),
                        _ => {}
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut json) = serde_json::to_value(&crd) else { return crd };
    walk(&mut json);
    serde_json::from_value(json).unwrap_or(crd)
}
