use super::*;
use crate::api::WebhookSubscription;

fn spec(yaml: &str) -> WebhookSubscriptionSpec {
    serde_yaml::from_str(yaml).expect("test spec parses")
}

const MINIMAL: &str = "eventTypes: ['order.*']\nendpoint: {url: 'https://example.com/hooks'}\n";

fn fields(spec: &WebhookSubscriptionSpec, policy: Policy) -> Vec<String> {
    check(spec, policy).into_iter().map(|p| p.field).collect()
}

#[test]
fn minimal_spec_is_valid_with_defaults() {
    let s = spec(MINIMAL);
    assert!(check(&s, Policy::default()).is_empty());
    let schedule = retry_schedule(&s).expect("default schedule");
    assert_eq!(schedule.max_attempts, 30);
    assert_eq!(schedule.event_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(schedule.initial_backoff, Duration::from_secs(5));
    assert_eq!(schedule.max_backoff, Duration::from_secs(3600));
}

#[test]
fn plain_http_needs_the_operator_flag() {
    let s = spec("eventTypes: ['*']\nendpoint: {url: 'http://example.com/'}\n");
    assert_eq!(fields(&s, Policy::default()), ["spec.endpoint.url"]);
    assert!(check(&s, Policy { allow_http: true, ..Policy::default() }).is_empty());
}

#[test]
fn a_ca_bundle_needs_an_https_url() {
    let ca = "  caBundleFrom: {secretRef: {name: private-ca}}\n";
    let plain = spec(&format!("eventTypes: ['*']\nendpoint:\n  url: 'http://example.com/'\n{ca}"));
    let allow_http = Policy { allow_http: true, ..Policy::default() };
    assert_eq!(fields(&plain, allow_http), ["spec.endpoint.caBundleFrom"]);
    let tls = spec(&format!("eventTypes: ['*']\nendpoint:\n  url: 'https://example.com/'\n{ca}"));
    assert!(check(&tls, Policy::default()).is_empty());
}

#[test]
fn unverified_endpoints_need_the_operator_flag() {
    let s = spec(&format!("{MINIMAL}validation: {{method: None}}\n"));
    assert_eq!(fields(&s, Policy::default()), ["spec.validation.method"]);
    assert!(check(&s, Policy { allow_unverified: true, ..Policy::default() }).is_empty());
}

#[test]
fn reserved_and_malformed_headers_are_named() {
    let s = spec(
        "eventTypes: ['*']\nendpoint:\n  url: 'https://example.com/'\n  headers:\n    Content-Type: x\n    ce-id: y\n    Webhook-Signature: z\n    Host: h\n    'bad header': v\n    X-Fine: ok\n    Traceparent: t\n    tracestate: s\n",
    );
    let got = fields(&s, Policy::default());
    assert_eq!(
        got,
        [
            "spec.endpoint.headers[Content-Type]",
            "spec.endpoint.headers[Host]",
            "spec.endpoint.headers[Traceparent]",
            "spec.endpoint.headers[Webhook-Signature]",
            "spec.endpoint.headers[bad header]",
            "spec.endpoint.headers[ce-id]",
            "spec.endpoint.headers[tracestate]",
        ]
    );
}

#[test]
fn header_values_with_line_breaks_are_rejected() {
    let s = spec(
        "eventTypes: ['*']\nendpoint:\n  url: 'https://example.com/'\n  headers: {X-A: \"a\\r\\nInjected: 1\"}\n",
    );
    assert_eq!(fields(&s, Policy::default()), ["spec.endpoint.headers[X-A]"]);
}

#[test]
fn backoff_bounds_and_order_are_checked() {
    let s = spec(&format!("{MINIMAL}retryPolicy: {{initialBackoff: 10m, maxBackoff: 1m}}\n"));
    assert_eq!(fields(&s, Policy::default()), ["spec.retryPolicy.maxBackoff"]);
    let s = spec(&format!("{MINIMAL}retryPolicy: {{eventTTL: 30s}}\n"));
    assert_eq!(fields(&s, Policy::default()), ["spec.retryPolicy.eventTTL"]);
    let s = spec(&format!("{MINIMAL}retryPolicy: {{eventTTL: 73h}}\n"));
    assert_eq!(fields(&s, Policy::default()), ["spec.retryPolicy.eventTTL"]);
    let s = spec(&format!("{MINIMAL}retryPolicy: {{initialBackoff: soon}}\n"));
    assert_eq!(fields(&s, Policy::default()), ["spec.retryPolicy.initialBackoff"]);
    let s = spec(&format!("{MINIMAL}retryPolicy: {{initialBackoff: 1h30m, maxBackoff: 2h}}\n"));
    assert!(check(&s, Policy::default()).is_empty());
}

#[test]
fn urls_are_checked() {
    for (url, why) in [
        ("ftp://example.com/x", "scheme"),
        ("https://user:pw@example.com/x", "credentials"),
        ("not a url", "valid URL"),
    ] {
        let s = spec(&format!("eventTypes: ['*']\nendpoint: {{url: '{url}'}}\n"));
        let problems = check(&s, Policy::default());
        assert_eq!(problems.len(), 1, "{url}: {problems:?}");
        assert!(problems[0].message.contains(why), "{url}: {problems:?}");
    }
}

#[test]
fn event_type_patterns() {
    for ok in ["*", "order.created", "order.*", "com.example.v1-x_y"] {
        assert!(is_event_type_pattern(ok), "{ok}");
    }
    for bad in ["", ".*", "order.*.x", "*.created", "or der", ".order", "order*"] {
        assert!(!is_event_type_pattern(bad), "{bad}");
    }
    let s = spec("eventTypes: ['ok', '*.bad']\nendpoint: {url: 'https://e.com/'}\n");
    assert_eq!(fields(&s, Policy::default()), ["spec.eventTypes[1]"]);
    let s = spec("eventTypes: []\nendpoint: {url: 'https://e.com/'}\n");
    assert_eq!(fields(&s, Policy::default()), ["spec.eventTypes"]);
}

#[test]
fn the_message_names_every_field() {
    let s = spec("eventTypes: []\nendpoint: {url: 'ftp://e.com/'}\n");
    let msg = describe(&check(&s, Policy::default()));
    assert!(msg.contains("spec.eventTypes") && msg.contains("spec.endpoint.url"), "{msg}");
}

/// The event-type pattern of the generated CRD schema, compiled as the API server would.
fn schema_pattern() -> regex::Regex {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(WebhookSubscription::crd()).expect("crd serializes");
    let pattern = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["eventTypes"]["items"]["pattern"]
        .as_str()
        .expect("spec.eventTypes[] has a pattern");
    regex::Regex::new(pattern).expect("the pattern compiles")
}

#[test]
fn the_crd_schema_pattern_agrees_with_the_rust_check() {
    let schema = schema_pattern();
    for t in [
        "*",
        "order.created",
        "order.*",
        "a",
        "9.x-y_z.*",
        "",
        ".*",
        "order.*.x",
        "*.created",
        "or der",
        ".order",
        "order*",
        "**",
        "a.**",
        "é",
    ] {
        assert_eq!(schema.is_match(t), is_event_type_pattern(t), "{t:?}");
    }
}

proptest::proptest! {
    #[test]
    fn the_schema_and_the_check_agree_on_any_string(t in "[A-Za-z0-9._*é -]{0,12}") {
        proptest::prop_assert_eq!(schema_pattern().is_match(&t), is_event_type_pattern(&t), "{:?}", t);
    }
}

#[test]
fn the_circuit_breaker_defaults_on_turns_off_at_zero_and_checks_its_bounds() {
    let default = retry_schedule(&spec(MINIMAL)).expect("schedule").breaker;
    let expected =
        Breaker { failures: 10, cooldown: Duration::from_secs(30), max_cooldown: Duration::from_secs(600) };
    assert_eq!(default, Some(expected));
    let cb = |yaml: &str| spec(&format!("{MINIMAL}delivery: {{circuitBreaker: {yaml}}}\n"));
    assert_eq!(retry_schedule(&cb("{consecutiveFailures: 0}")).expect("off").breaker, None);
    let policy = Policy::default();
    assert_eq!(
        fields(&cb("{consecutiveFailures: 1001}"), policy),
        ["spec.delivery.circuitBreaker.consecutiveFailures"]
    );
    assert_eq!(fields(&cb("{cooldown: 500ms}"), policy), ["spec.delivery.circuitBreaker.cooldown"]);
    assert_eq!(
        fields(&cb("{cooldown: 2h, maxCooldown: 3h}"), policy),
        ["spec.delivery.circuitBreaker.cooldown"]
    );
    assert_eq!(fields(&cb("{maxCooldown: 25h}"), policy), ["spec.delivery.circuitBreaker.maxCooldown"]);
    assert_eq!(
        fields(&cb("{cooldown: 1m, maxCooldown: 30s}"), policy),
        ["spec.delivery.circuitBreaker.maxCooldown"],
        "maxCooldown must not be shorter than cooldown"
    );
    assert!(check(&cb("{consecutiveFailures: 3, cooldown: 1s, maxCooldown: 24h}"), policy).is_empty());
}

#[test]
fn disable_after_defaults_to_five_days_is_off_at_zero_and_checks_its_bounds() {
    let after = |yaml: &str| spec(&format!("{MINIMAL}retryPolicy: {{disableAfter: {yaml}}}\n"));
    let default = retry_schedule(&spec(MINIMAL)).expect("schedule").disable_after;
    assert_eq!(default, Some(Duration::from_secs(120 * 3600)));
    assert_eq!(retry_schedule(&after("0s")).expect("never").disable_after, None);
    assert_eq!(retry_schedule(&after("10s")).expect("short").disable_after, Some(Duration::from_secs(10)));
    let policy = Policy::default();
    for bad in ["9s", "721h"] {
        assert_eq!(fields(&after(bad), policy), ["spec.retryPolicy.disableAfter"], "{bad}");
    }
}
