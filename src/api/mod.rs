//! The `hookline.dev/v1alpha1` API: the custom resources users apply and read.

mod conditions;
mod failed_event;
mod subscription;

pub use conditions::{Reason, condition_type, conditions_schema, set_condition};
pub use failed_event::{
    CloudEventRecord, FailedEvent, FailedEventSpec, FailedEventStatus, FailureReason, FailureRecord,
    ReplayOutcome, ReplayStatus,
};
pub use subscription::{
    DeadLetterSpec, DeadLetterStats, DeliveryMode, DeliverySpec, DeliveryStats, Endpoint, EventFilter,
    HeadersFrom, LastDelivery, RetryPolicy, SecretRef, SigningSpec, ValidationMethod, ValidationSpec,
    WebhookSubscription, WebhookSubscriptionSpec, WebhookSubscriptionStatus,
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
}

/// Produce the CRDs as one multi-document YAML stream, the content of `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [WebhookSubscription::crd(), FailedEvent::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
