//! The pure middle of reconciliation: from a subscription and the facts the controller gathered,
//! decide its conditions, whether its events may flow, and when to look at it again.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::spec::{Problem, describe};
use crate::api::{
    Reason, SecretRef, WebhookSubscription, WebhookSubscriptionStatus, annotations, condition_type,
    set_condition,
};

/// Whether a subscription's dispatcher may send events now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Deliver.
    Open,
    /// Keep events queued; the reason says why (Suspended, Expired, AwaitingValidation, …).
    Held(Reason),
}

/// Where the endpoint stands in the ownership handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// The endpoint proved it wants the traffic (or verification is off).
    Verified(String),
    /// Waiting for the endpoint to answer.
    Pending(String),
    /// The handshake failed.
    Failed(String),
    /// The endpoint resolves to an address the SSRF guard refuses.
    Blocked(String),
}

/// The signing Secret as the controller found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// The Secret exists (or was just created).
    Present(String),
    /// The Secret named in `spec.signing.secretRef` does not exist.
    Missing(String),
}

/// What the controller learned before deciding.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Problems with the spec; non-empty means the spec is invalid.
    pub problems: Vec<Problem>,
    /// Signing Secret state (absent when the spec is invalid and nothing was looked up).
    pub signing: Option<Signing>,
    /// Endpoint verification state.
    pub verification: EndpointState,
    /// The time of this reconciliation.
    pub now: jiff::Timestamp,
}

/// What the controller will do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to write (written only if it differs from the current one).
    pub status: WebhookSubscriptionStatus,
    /// `None`: the subscription must not be known to the delivery side (invalid spec).
    pub gate: Option<Gate>,
    /// The reason of the `Ready` condition.
    pub ready_reason: Reason,
    /// When to reconcile again regardless of changes (e.g. at `expiresAt`).
    pub requeue_after: Option<Duration>,
}

/// Decide a subscription's status and gate.
pub fn decide(sub: &WebhookSubscription, facts: &Facts) -> Decision {
    let generation = sub.metadata.generation;
    let now = Time(facts.now);
    let mut status = sub.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let conds = &mut status.conditions;

    if !facts.problems.is_empty() {
        let message = format!("The spec is invalid: {}", describe(&facts.problems));
        set_condition(conds, condition_type::READY, false, Reason::InvalidSpec, message, generation, &now);
        return Decision { status, gate: None, ready_reason: Reason::InvalidSpec, requeue_after: None };
    }

    let (verified, v_reason, v_message) = match &facts.verification {
        EndpointState::Verified(m) => (true, Reason::Verified, m.clone()),
        EndpointState::Pending(m) => (false, Reason::Pending, m.clone()),
        EndpointState::Failed(m) => (false, Reason::ValidationFailed, m.clone()),
        EndpointState::Blocked(m) => (false, Reason::EndpointBlocked, m.clone()),
    };
    set_condition(conds, condition_type::ENDPOINT_VERIFIED, verified, v_reason, v_message, generation, &now);
    // Delivery disabled (410 Gone, or failing for `disableAfter`) for this generation and this
    // value of the enable annotation: a new value of either enables it again.
    let enable = sub.annotations().get(annotations::ENABLE);
    let disabled = status
        .disabled
        .as_ref()
        .filter(|d| generation.is_some_and(|g| d.applies_to(g, enable.map(String::as_str))))
        .map(|d| d.message.clone());

    status.signing_secret_ref = match &facts.signing {
        Some(Signing::Present(name)) | Some(Signing::Missing(name)) => Some(SecretRef { name: name.clone() }),
        None => status.signing_secret_ref.take(),
    };

    let expires_in = sub.spec.expires_at.as_ref().map(|t| t.0.duration_since(facts.now));
    let expired = expires_in.is_some_and(|d| !d.is_positive());
    let (ready, reason, message) = if expired {
        (false, Reason::Expired, "spec.expiresAt has passed; the subscription no longer delivers".to_string())
    } else if let Some(Signing::Missing(name)) = &facts.signing {
        (
            false,
            Reason::SigningSecretMissing,
            format!(
                "Secret {name:?} named in spec.signing.secretRef does not exist; events are held until it does"
            ),
        )
    } else if let Some(why) = disabled {
        (
            false,
            Reason::Disabled,
            format!(
                "{why}; set the annotation {} to a new value, or change the spec, to deliver again",
                annotations::ENABLE
            ),
        )
    } else if sub.spec.suspend {
        (false, Reason::Suspended, "spec.suspend is true; events are kept until it is resumed".to_string())
    } else if !verified {
        (false, Reason::AwaitingValidation, "Events are held until the endpoint is verified".to_string())
    } else {
        (true, Reason::Active, format!("Delivering to {}", sub.spec.endpoint.url))
    };
    set_condition(conds, condition_type::READY, ready, reason, message, generation, &now);

    let requeue_after = expires_in.filter(|d| d.is_positive()).and_then(|d| Duration::try_from(d).ok());
    let gate = if ready { Gate::Open } else { Gate::Held(reason) };
    Decision { status, gate: Some(gate), ready_reason: reason, requeue_after }
}

/// The part of the status the controller owns (the delivery side owns `Healthy` and the counters).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The generation these conditions describe.
    pub observed_generation: Option<i64>,
    /// `Ready` and `EndpointVerified`.
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The Secret the signing keys are read from.
    pub signing_secret_ref: Option<SecretRef>,
}

/// Extract the controller-owned fields.
pub fn owned(status: &WebhookSubscriptionStatus) -> OwnedStatus {
    OwnedStatus {
        observed_generation: status.observed_generation,
        conditions: status
            .conditions
            .iter()
            .filter(|c| c.type_ == condition_type::READY || c.type_ == condition_type::ENDPOINT_VERIFIED)
            .cloned()
            .collect(),
        signing_secret_ref: status.signing_secret_ref.clone(),
    }
}

/// Whether the controller-owned part of the status changed.
pub fn changed(old: Option<&WebhookSubscriptionStatus>, new: &WebhookSubscriptionStatus) -> bool {
    old.map(owned).as_ref() != Some(&owned(new))
}

/// The name of the signing Secret the operator generates for a subscription.
pub fn generated_secret_name(sub: &WebhookSubscription) -> String {
    format!("{}-signing", sub.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::subscription;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("valid")
    }

    fn facts(verification: EndpointState) -> Facts {
        Facts { problems: vec![], signing: Some(Signing::Present("s".into())), verification, now: at(1_000) }
    }

    fn ready(d: &Decision) -> (String, String) {
        let c = d.status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn verified_subscription_is_ready_and_open() {
        let sub = subscription("minimal.yaml");
        let d = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        assert_eq!(ready(&d), ("True".into(), "Active".into()));
        assert_eq!(d.gate, Some(Gate::Open));
        assert_eq!(d.status.observed_generation, Some(1));
        assert_eq!(d.status.signing_secret_ref, Some(SecretRef { name: "s".into() }));
        let types: Vec<_> = d.status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["EndpointVerified", "Ready"], "Healthy belongs to the delivery side");
    }

    #[test]
    fn unverified_subscription_awaits_validation() {
        let sub = subscription("minimal.yaml");
        let d = decide(&sub, &facts(EndpointState::Pending("waiting".into())));
        assert_eq!(ready(&d), ("False".into(), "AwaitingValidation".into()));
        assert_eq!(d.gate, Some(Gate::Held(Reason::AwaitingValidation)));
    }

    #[test]
    fn suspended_subscription_holds_events() {
        let mut sub = subscription("minimal.yaml");
        sub.spec.suspend = true;
        let d = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        assert_eq!(ready(&d), ("False".into(), "Suspended".into()));
        assert_eq!(d.gate, Some(Gate::Held(Reason::Suspended)));
    }

    #[test]
    fn expiry_is_requeued_for_the_exact_instant_then_fires() {
        let mut sub = subscription("minimal.yaml");
        sub.spec.expires_at = Some(Time(at(1_090)));
        let d = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        assert_eq!(ready(&d).1, "Active");
        assert_eq!(d.requeue_after, Some(Duration::from_secs(90)));

        let mut later = facts(EndpointState::Verified("ok".into()));
        later.now = at(1_090);
        let d = decide(&sub, &later);
        assert_eq!(ready(&d), ("False".into(), "Expired".into()));
        assert_eq!(d.requeue_after, None);
        assert_eq!(d.gate, Some(Gate::Held(Reason::Expired)));
    }

    #[test]
    fn expiry_wins_over_suspend() {
        let mut sub = subscription("minimal.yaml");
        sub.spec.suspend = true;
        sub.spec.expires_at = Some(Time(at(10)));
        let d = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        assert_eq!(ready(&d).1, "Expired");
    }

    #[test]
    fn invalid_spec_is_reported_and_not_registered() {
        let sub = subscription("minimal.yaml");
        let mut f = facts(EndpointState::Verified("ok".into()));
        f.problems = vec![Problem { field: "spec.endpoint.url".into(), message: "bad".into() }];
        let d = decide(&sub, &f);
        assert_eq!(ready(&d), ("False".into(), "InvalidSpec".into()));
        let msg = &d.status.conditions.iter().find(|c| c.type_ == "Ready").expect("ready").message;
        assert!(msg.contains("spec.endpoint.url: bad"), "{msg}");
        assert_eq!(d.gate, None);
    }

    #[test]
    fn missing_signing_secret_holds_events() {
        let sub = subscription("minimal.yaml");
        let mut f = facts(EndpointState::Verified("ok".into()));
        f.signing = Some(Signing::Missing("mine".into()));
        let d = decide(&sub, &f);
        assert_eq!(ready(&d), ("False".into(), "SigningSecretMissing".into()));
    }

    #[test]
    fn delivery_stays_disabled_until_the_spec_or_the_enable_annotation_changes() {
        let mut sub = subscription("minimal.yaml");
        sub.status = Some(WebhookSubscriptionStatus {
            disabled: Some(crate::api::Disabled {
                reason: "FailingTooLong".into(),
                message: "No delivery succeeded for 120h".into(),
                time: Time(at(1)),
                generation: 1,
                enable_annotation: None,
            }),
            ..WebhookSubscriptionStatus::default()
        });
        let verified = facts(EndpointState::Verified("ok".into()));
        let d = decide(&sub, &verified);
        assert_eq!(ready(&d), ("False".into(), "Disabled".into()));
        assert_eq!(d.gate, Some(Gate::Held(Reason::Disabled)));
        let message = &d.status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready").message;
        assert!(
            message.starts_with("No delivery succeeded for 120h; set the annotation hookline.dev/enable")
        );

        let mut enabled = sub.clone();
        enabled.metadata.annotations = Some([("hookline.dev/enable".to_string(), "1".to_string())].into());
        assert_eq!(ready(&decide(&enabled, &verified)).1, "Active", "a new annotation value");
        let disabled = enabled.status.as_mut().and_then(|s| s.disabled.as_mut()).expect("disabled");
        disabled.enable_annotation = Some("1".into());
        assert_eq!(ready(&decide(&enabled, &verified)).1, "Disabled", "disabled again under that value");
        sub.metadata.generation = Some(2);
        assert_eq!(ready(&decide(&sub, &verified)).1, "Active", "a spec change");
    }

    #[test]
    fn deciding_twice_changes_nothing() {
        let sub = subscription("minimal.yaml");
        let first = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        let mut again = sub.clone();
        again.status = Some(first.status.clone());
        let mut later = facts(EndpointState::Verified("ok".into()));
        later.now = at(5_000);
        let second = decide(&again, &later);
        assert!(!changed(Some(&first.status), &second.status), "a steady state must not cause a write");
    }

    #[test]
    fn delivery_fields_do_not_count_as_a_controller_change() {
        let sub = subscription("minimal.yaml");
        let d = decide(&sub, &facts(EndpointState::Verified("ok".into())));
        let mut with_delivery = d.status.clone();
        with_delivery.delivery_stats = Some(Default::default());
        set_condition(
            &mut with_delivery.conditions,
            "Healthy",
            true,
            Reason::Delivering,
            "",
            None,
            &Time(at(1)),
        );
        assert!(!changed(Some(&with_delivery), &d.status));
        let patch = serde_json::to_value(owned(&with_delivery)).expect("json");
        assert!(patch.get("deliveryStats").is_none());
        assert_eq!(patch["conditions"].as_array().expect("conditions").len(), 2);
    }
}
