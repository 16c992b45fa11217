//! One case per CEL rule in the generated CRDs: a spec that keeps the rule and one that breaks it.
//! `tests/integration/cel_rules.rs` evaluates them locally, `tests/integration/cel_server.rs` on a CEL-enforcing API server;
//! a rule without a case here fails `every_rule_in_the_crds_has_a_case`.

use serde_json::{Value, json};

/// A rule, and specs on either side of it.
pub struct Case {
    /// The resource kind the rule is on.
    pub kind: &'static str,
    /// The rule's message, exactly as in the CRD.
    pub message: &'static str,
    /// The field the API server names when the rule is broken.
    pub field: &'static str,
    /// A spec that keeps the rule.
    pub keeps: Value,
    /// A spec that breaks it: on create, or for a transition rule as an update of `keeps`.
    pub breaks: Value,
    /// Whether the rule compares with the old object (`oldSelf`).
    pub transition: bool,
}

fn subscription(over: Value) -> Value {
    let mut spec = json!({"eventTypes": ["order.*"], "endpoint": {"url": "https://example.com/hook"}});
    super::merge(&mut spec, over);
    spec
}

fn failed_event(attempts: u32) -> Value {
    json!({
        "subscription": "orders",
        "event": {"specversion": "1.0", "id": "1", "source": "/shop", "type": "order.created", "data": {"total": 3}},
        "failure": {"reason": "MaxAttemptsExceeded", "attempts": attempts, "lastStatusCode": 500}
    })
}

/// Every case, in the order the rules appear in the CRDs.
pub fn cases() -> Vec<Case> {
    let sub = |message, field, keeps, breaks| Case {
        kind: "WebhookSubscription",
        message,
        field,
        keeps: subscription(keeps),
        breaks: subscription(breaks),
        transition: false,
    };
    vec![
        sub(
            "endpoint.headers must not set reserved headers (Content-Type, Content-Length, Host, Transfer-Encoding, Connection, traceparent, tracestate, ce-*, webhook-*)",
            "spec.endpoint.headers",
            json!({"endpoint": {"headers": {"X-Team": "payments", "Authorization-Hint": "none"}}}),
            json!({"endpoint": {"headers": {"Webhook-Signature": "forged"}}}),
        ),
        sub(
            "endpoint.headers must not set reserved headers (Content-Type, Content-Length, Host, Transfer-Encoding, Connection, traceparent, tracestate, ce-*, webhook-*)",
            "spec.endpoint.headers",
            json!({"endpoint": {"headers": {"X-Trace": "mine"}}}),
            json!({"endpoint": {"headers": {"TraceParent": "00-forged"}}}),
        ),
        sub(
            "delivery.circuitBreaker.cooldown must be between 1s and 1h",
            "spec.delivery.circuitBreaker.cooldown",
            json!({"delivery": {"circuitBreaker": {"cooldown": "1s", "maxCooldown": "1h"}}}),
            json!({"delivery": {"circuitBreaker": {"cooldown": "500ms"}}}),
        ),
        sub(
            "delivery.circuitBreaker.maxCooldown must be between 1s and 24h",
            "spec.delivery.circuitBreaker.maxCooldown",
            json!({"delivery": {"circuitBreaker": {"maxCooldown": "24h"}}}),
            json!({"delivery": {"circuitBreaker": {"maxCooldown": "25h"}}}),
        ),
        sub(
            "delivery.circuitBreaker.maxCooldown must not be shorter than cooldown",
            "spec.delivery.circuitBreaker.maxCooldown",
            json!({"delivery": {"circuitBreaker": {"cooldown": "1m", "maxCooldown": "1m"}}}),
            json!({"delivery": {"circuitBreaker": {"cooldown": "1m", "maxCooldown": "30s"}}}),
        ),
        sub(
            "retryPolicy.disableAfter must be 0s (never) or between 10s and 720h",
            "spec.retryPolicy.disableAfter",
            json!({"retryPolicy": {"disableAfter": "0s"}}),
            json!({"retryPolicy": {"disableAfter": "5s"}}),
        ),
        sub(
            "retryPolicy.disableAfter must be 0s (never) or between 10s and 720h",
            "spec.retryPolicy.disableAfter",
            json!({"retryPolicy": {"disableAfter": "720h"}}),
            json!({"retryPolicy": {"disableAfter": "721h"}}),
        ),
        sub(
            "endpoint.headers keys must be valid HTTP header names",
            "spec.endpoint.headers",
            json!({"endpoint": {"headers": {"X-Request-Source": "hookline"}}}),
            json!({"endpoint": {"headers": {"bad header": "x"}}}),
        ),
        sub(
            "endpoint.caBundleFrom needs an https:// url",
            "spec.endpoint.caBundleFrom",
            json!({"endpoint": {"caBundleFrom": {"secretRef": {"name": "private-ca"}}}}),
            json!({"endpoint": {"url": "http://example.com/hook", "caBundleFrom": {"secretRef": {"name": "private-ca"}}}}),
        ),
        sub(
            "retryPolicy.maxBackoff must not be shorter than retryPolicy.initialBackoff",
            "spec.retryPolicy.maxBackoff",
            json!({"retryPolicy": {"initialBackoff": "1m", "maxBackoff": "1m"}}),
            json!({"retryPolicy": {"initialBackoff": "10m", "maxBackoff": "1m"}}),
        ),
        sub(
            "retryPolicy.eventTTL must be between 1m and 72h",
            "spec.retryPolicy.eventTTL",
            json!({"retryPolicy": {"eventTTL": "72h"}}),
            json!({"retryPolicy": {"eventTTL": "73h"}}),
        ),
        sub(
            "retryPolicy.initialBackoff must be at least 100ms and maxBackoff at most 24h",
            "spec.retryPolicy.initialBackoff",
            json!({"retryPolicy": {"initialBackoff": "100ms", "maxBackoff": "24h"}}),
            json!({"retryPolicy": {"initialBackoff": "10ms"}}),
        ),
        Case {
            kind: "FailedEvent",
            message: "FailedEvent spec is immutable",
            field: "spec",
            keeps: failed_event(30),
            breaks: failed_event(1),
            transition: true,
        },
    ]
}

/// (kind, message) of every CEL rule in the generated CRDs.
pub fn rules_in_crds() -> Vec<(String, String)> {
    fn collect(kind: &str, schema: &Value, out: &mut Vec<(String, String)>) {
        match schema {
            Value::Object(map) => {
                for rule in
                    map.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten()
                {
                    let message =
                        rule["message"].as_str().unwrap_or_else(|| panic!("rule without a message: {rule}"));
                    out.push((kind.to_string(), message.to_string()));
                }
                map.values().for_each(|v| collect(kind, v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(kind, v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for crd in hookline::api::crds() {
        let json = serde_json::to_value(&crd).expect("CRD serializes");
        collect(&crd.spec.names.kind, &json["spec"]["versions"], &mut out);
    }
    out
}

/// A whole object of `kind` named `name` with `spec`.
pub fn manifest(kind: &str, name: &str, spec: &Value) -> Value {
    json!({"apiVersion": "hookline.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}
