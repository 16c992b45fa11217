//! The CRDs' CEL rules, evaluated locally: our test API server (Kubernetes 1.20) ignores them,
//! modern clusters enforce them at `kubectl apply`.

use hookline::api::{FailedEvent, WebhookSubscription};
use kube::core::cel::{validate_cel, validate_cel_update};

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
fn malformed_header_names_are_rejected() {
    let sub = subscription(&format!("{BASE}  headers: {{'bad header': x}}\n"));
    let v = violations(&sub);
    assert!(v.iter().any(|m| m.contains("valid HTTP header names")), "{v:?}");
}

#[test]
fn a_ca_bundle_needs_an_https_url() {
    let ca = "  caBundleFrom: {secretRef: {name: private-ca}}\n";
    assert_eq!(violations(&subscription(&format!("{BASE}{ca}"))), Vec::<String>::new());
    let plain = format!("{}{ca}", BASE.replace("https://", "http://"));
    let v = violations(&subscription(&plain));
    assert!(v.iter().any(|m| m.contains("caBundleFrom needs an https:// url")), "{v:?}");
}

#[test]
fn max_backoff_must_not_be_shorter_than_initial_backoff() {
    let sub = subscription(&format!("{BASE}retryPolicy: {{initialBackoff: 10m, maxBackoff: 1m}}\n"));
    let v = violations(&sub);
    assert!(v.iter().any(|m| m.contains("maxBackoff must not be shorter")), "{v:?}");
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
