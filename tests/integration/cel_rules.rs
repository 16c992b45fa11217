//! The CRDs' CEL rules, evaluated locally in milliseconds, without an API server: the table of
//! `crate::support::cel_cases` (which `tests/integration/cel_server.rs` runs on a CEL-enforcing API server) plus more
//! variants of some rules. A rule with no case in the table fails here first.

use crate::support::cel_cases::{cases, manifest, rules_in_crds};
use hookline::api::{FailedEvent, WebhookSubscription};
use kube::core::cel::{validate_cel, validate_cel_update};

#[test]
fn every_rule_in_the_crds_has_a_case() {
    let covered: Vec<(String, String)> =
        cases().iter().map(|c| (c.kind.to_string(), c.message.to_string())).collect();
    let rules = rules_in_crds();
    assert!(!rules.is_empty(), "the CRDs carry CEL rules");
    for rule in &rules {
        assert!(
            covered.contains(rule),
            "no case in tests/integration/support/cel_cases.rs for the rule {rule:?}"
        );
    }
    for case in &covered {
        assert!(rules.contains(case), "a case for a rule the CRDs no longer have: {case:?}");
    }
}

/// The messages of the rules `object` breaks, judged by the installed CRD's schema.
fn refusals(kind: &str, object: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
    let crd = hookline::api::crds().into_iter().find(|c| c.spec.names.kind == kind).expect("CRD of kind");
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    let schema = serde_json::to_value(schema.expect("schema")).expect("schema serializes");
    match kube::core::cel::Validator::new().validate(&schema, object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_case_keeps_and_breaks_its_rule() {
    for case in cases() {
        let keeps = manifest(case.kind, "x", &case.keeps);
        let breaks = manifest(case.kind, "x", &case.breaks);
        let old = case.transition.then_some(&keeps);
        assert_eq!(refusals(case.kind, &keeps, old), Vec::<String>::new(), "{}: kept", case.message);
        let broken = refusals(case.kind, &breaks, old);
        assert!(broken.iter().any(|m| m.contains(case.message)), "{}: not refused: {broken:?}", case.message);
    }
}

fn subscription(spec_yaml: &str) -> WebhookSubscription {
    let doc = format!(
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: s, namespace: n}}\nspec:\n{}",
        spec_yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    serde_yaml::from_str(&doc).expect("test manifest parses")
}

fn violations(sub: &WebhookSubscription) -> Vec<String> {
    match validate_cel(sub) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

const BASE: &str = "eventTypes: ['order.*']\nendpoint:\n  url: https://example.com/hook\n";

#[test]
fn a_valid_subscription_passes_every_rule() {
    let full = format!(
        "{BASE}  headers: {{X-Team: payments, Authorization-Hint: none}}\nretryPolicy: {{maxAttempts: 5, eventTTL: 1h, initialBackoff: 1s, maxBackoff: 10m}}\n"
    );
    assert_eq!(violations(&subscription(&full)), Vec::<String>::new());
}

#[test]
fn reserved_headers_are_rejected() {
    for header in
        ["Content-Type", "host", "ce-id", "CE-Source", "webhook-signature", "Webhook-Id", "Connection"]
    {
        let sub = subscription(&format!("{BASE}  headers: {{{header}: x}}\n"));
        let v = violations(&sub);
        assert!(v.iter().any(|m| m.contains("reserved headers")), "{header}: {v:?}");
    }
}

#[test]
fn event_ttl_is_bounded() {
    for ttl in ["30s", "73h"] {
        let sub = subscription(&format!("{BASE}retryPolicy: {{eventTTL: {ttl}}}\n"));
        let v = violations(&sub);
        assert!(v.iter().any(|m| m.contains("eventTTL must be between 1m and 72h")), "{ttl}: {v:?}");
    }
    let sub = subscription(&format!("{BASE}retryPolicy: {{eventTTL: 72h}}\n"));
    assert_eq!(violations(&sub), Vec::<String>::new());
}

#[test]
fn backoff_extremes_are_rejected() {
    let sub = subscription(&format!("{BASE}retryPolicy: {{initialBackoff: 10ms, maxBackoff: 1s}}\n"));
    assert!(!violations(&sub).is_empty());
    let sub = subscription(&format!("{BASE}retryPolicy: {{initialBackoff: 1s, maxBackoff: 25h}}\n"));
    assert!(!violations(&sub).is_empty());
}

fn failed_event() -> FailedEvent {
    serde_yaml::from_str(
        r#"
apiVersion: hookline.dev/v1alpha1
kind: FailedEvent
metadata: {name: f, namespace: n}
spec:
  subscription: orders
  event: {specversion: "1.0", id: "1", source: /shop, type: order.created, data: {total: 3}}
  failure: {reason: MaxAttemptsExceeded, attempts: 30, lastStatusCode: 500}
"#,
    )
    .expect("test manifest parses")
}

#[test]
fn failed_event_spec_is_immutable() {
    let old = failed_event();
    assert!(validate_cel(&old).is_ok());
    assert!(validate_cel_update(&old.clone(), &old).is_ok(), "an unchanged spec is fine");
    let mut changed = old.clone();
    changed.spec.failure.attempts = 1;
    let err = validate_cel_update(&changed, &old).expect_err("changing the spec is refused");
    assert!(err.into_vec().iter().any(|e| e.to_string().contains("immutable")));
    let mut changed_data = old.clone();
    changed_data.spec.event.data = Some(serde_json::json!({"total": 4}));
    assert!(validate_cel_update(&changed_data, &old).is_err(), "the payload is part of the immutable spec");
}
