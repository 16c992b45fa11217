//! Checks of a subscription spec that the CRD schema cannot make, or that an API server without
//! CEL (Kubernetes < 1.25) lets through. Pure: the spec and the operator's policy in, problems out.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::filter::CelFilter;

use crate::api::{ValidationMethod, WebhookSubscriptionSpec};

/// What the operator allows beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// `--allow-http`: plain `http://` endpoints are accepted.
    pub allow_http: bool,
    /// `--allow-unverified-endpoints`: `validation.method: None` is accepted.
    pub allow_unverified: bool,
}

/// One problem with a spec, naming the field so the user knows what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, e.g. `spec.endpoint.url`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Header names Hookline sets itself; a subscription may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "traceparent",
    "tracestate",
];
const RESERVED_HEADER_PREFIXES: &[&str] = &["ce-", "webhook-"];

/// The retry schedule of a valid spec, as durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts before the event is given up.
    pub max_attempts: u32,
    /// How long after acceptance the event is given up.
    pub event_ttl: Duration,
    /// Backoff after the first failed attempt.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// The circuit breaker (`None`: off).
    pub breaker: Option<Breaker>,
    /// Disable the subscription after failing this long (`None`: never).
    pub disable_after: Option<Duration>,
}

/// When the circuit breaker opens and how long it stays open (`spec.delivery.circuitBreaker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    /// Failed attempts in a row that open it.
    pub failures: u32,
    /// How long it stays open first.
    pub cooldown: Duration,
    /// The longest it stays open (the cooldown doubles after each failed probe).
    pub max_cooldown: Duration,
}

impl Breaker {
    /// How long to stay open after a failed probe that followed `cooldown`.
    pub fn next_cooldown(&self, cooldown: Duration) -> Duration {
        (cooldown * 2).min(self.max_cooldown)
    }
}

/// Parse a Go-style duration (`5s`, `1h30m`, `250ms`), rejecting negative values.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = kube::core::Duration::from_str(s).map_err(|e| format!("{s:?} is not a duration ({e})"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

/// Check a spec against the rules of the schema and the operator's policy.
#[cfg(test)]
pub fn check(spec: &WebhookSubscriptionSpec, policy: Policy) -> Vec<Problem> {
    check_and_compile(spec, policy).0
}

/// The spec's problems, also returning the compiled CEL filter when there is one and it compiles.
fn check_and_compile(spec: &WebhookSubscriptionSpec, policy: Policy) -> (Vec<Problem>, Option<CelFilter>) {
    let mut problems = Vec::new();
    let filter = match spec.filter.as_ref().and_then(|f| f.cel.as_deref()) {
        None => None,
        Some(source) => match CelFilter::compile(source) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(Problem::new("spec.filter.cel", e));
                None
            }
        },
    };
    check_event_types(spec, &mut problems);
    check_endpoint(spec, policy, &mut problems);
    if let Err(p) = retry_schedule(spec) {
        problems.extend(p);
    }
    if let Some(f) = &spec.filter {
        if f.source.as_deref() == Some("") {
            problems.push(Problem::new("spec.filter.source", "must not be empty when set"));
        }
        if f.subject_prefix.as_deref() == Some("") {
            problems.push(Problem::new("spec.filter.subjectPrefix", "must not be empty when set"));
        }
    }
    if spec.endpoint.ca_bundle_from.is_some() && !spec.endpoint.url.starts_with("https://") {
        problems.push(Problem::new("spec.endpoint.caBundleFrom", "needs an https:// url"));
    }
    if spec.validation.method == ValidationMethod::None && !policy.allow_unverified {
        problems.push(Problem::new(
            "spec.validation.method",
            "None is not allowed: the operator was not started with --allow-unverified-endpoints; use Event or Options",
        ));
    }
    for (field, secret) in [
        ("spec.signing.secretRef.name", spec.signing.as_ref().map(|s| &s.secret_ref.name)),
        (
            "spec.endpoint.headersFrom.secretRef.name",
            spec.endpoint.headers_from.as_ref().map(|h| &h.secret_ref.name),
        ),
        (
            "spec.endpoint.caBundleFrom.secretRef.name",
            spec.endpoint.ca_bundle_from.as_ref().map(|c| &c.secret_ref.name),
        ),
    ] {
        if let Some(name) = secret
            && !is_dns_subdomain(name)
        {
            problems.push(Problem::new(field, format!("{name:?} is not a valid Secret name")));
        }
    }
    (problems, filter)
}

/// A spec as the delivery side uses it, parsed once per generation.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The retry policy as durations.
    pub schedule: RetrySchedule,
    /// `spec.filter.cel`, compiled.
    pub filter: Option<Arc<CelFilter>>,
}

/// A spec parsed once for the delivery side: the retry schedule and CEL filter of a spec
/// that passes every check, or every problem the checks find. Nothing downstream parses the spec's
/// strings again.
pub fn parse(spec: &WebhookSubscriptionSpec, policy: Policy) -> Result<Parsed, Vec<Problem>> {
    let (problems, filter) = check_and_compile(spec, policy);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Parsed { schedule: retry_schedule(spec)?, filter: filter.map(Arc::new) })
}

/// The retry schedule, or the problems that prevent one.
pub fn retry_schedule(spec: &WebhookSubscriptionSpec) -> Result<RetrySchedule, Vec<Problem>> {
    let rp = &spec.retry_policy;
    let mut problems = Vec::new();
    let mut parse = |field: &str, value: &str| match parse_duration(value) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(Problem::new(format!("spec.retryPolicy.{field}"), e));
            None
        }
    };
    let ttl = parse("eventTTL", &rp.event_ttl);
    let initial = parse("initialBackoff", &rp.initial_backoff);
    let max = parse("maxBackoff", &rp.max_backoff);
    let disable_after = parse("disableAfter", &rp.disable_after);
    let breaker = circuit_breaker(spec, &mut problems);
    if !(1..=100).contains(&rp.max_attempts) {
        problems.push(Problem::new("spec.retryPolicy.maxAttempts", "must be between 1 and 100"));
    }
    if let Some(ttl) = ttl
        && !(Duration::from_secs(60)..=Duration::from_secs(72 * 3600)).contains(&ttl)
    {
        problems.push(Problem::new("spec.retryPolicy.eventTTL", "must be between 1m and 72h"));
    }
    if let Some(initial) = initial
        && initial < Duration::from_millis(100)
    {
        problems.push(Problem::new("spec.retryPolicy.initialBackoff", "must be at least 100ms"));
    }
    if let Some(max) = max
        && max > Duration::from_secs(24 * 3600)
    {
        problems.push(Problem::new("spec.retryPolicy.maxBackoff", "must be at most 24h"));
    }
    if let Some(after) = disable_after
        && !after.is_zero()
        && !(Duration::from_secs(10)..=Duration::from_secs(720 * 3600)).contains(&after)
    {
        problems.push(Problem::new(
            "spec.retryPolicy.disableAfter",
            "must be 0s (never) or between 10s and 720h",
        ));
    }
    if let (Some(initial), Some(max)) = (initial, max)
        && max < initial
    {
        problems.push(Problem::new(
            "spec.retryPolicy.maxBackoff",
            "must not be shorter than spec.retryPolicy.initialBackoff",
        ));
    }
    match (ttl, initial, max, disable_after) {
        (Some(event_ttl), Some(initial_backoff), Some(max_backoff), Some(after)) if problems.is_empty() => {
            Ok(RetrySchedule {
                max_attempts: rp.max_attempts,
                event_ttl,
                initial_backoff,
                max_backoff,
                breaker,
                disable_after: (!after.is_zero()).then_some(after),
            })
        }
        _ => Err(problems),
    }
}

/// The circuit breaker of `spec.delivery.circuitBreaker` (`None` when off or invalid).
fn circuit_breaker(spec: &WebhookSubscriptionSpec, problems: &mut Vec<Problem>) -> Option<Breaker> {
    let cb = &spec.delivery.circuit_breaker;
    let mut parse = |field: &str, value: &str, range: (Duration, Duration), bounds: &str| {
        let field = format!("spec.delivery.circuitBreaker.{field}");
        match parse_duration(value) {
            Ok(d) if (range.0..=range.1).contains(&d) => Some(d),
            Ok(_) => {
                problems.push(Problem::new(field, format!("must be between {bounds}")));
                None
            }
            Err(e) => {
                problems.push(Problem::new(field, e));
                None
            }
        }
    };
    let second = Duration::from_secs(1);
    let cooldown = parse("cooldown", &cb.cooldown, (second, Duration::from_secs(3600)), "1s and 1h");
    let max_cooldown =
        parse("maxCooldown", &cb.max_cooldown, (second, Duration::from_secs(24 * 3600)), "1s and 24h");
    if cb.consecutive_failures > 1000 {
        problems.push(Problem::new(
            "spec.delivery.circuitBreaker.consecutiveFailures",
            "must be between 0 and 1000",
        ));
    }
    let (cooldown, max_cooldown) = (cooldown?, max_cooldown?);
    if max_cooldown < cooldown {
        problems.push(Problem::new(
            "spec.delivery.circuitBreaker.maxCooldown",
            "must not be shorter than spec.delivery.circuitBreaker.cooldown",
        ));
        return None;
    }
    (cb.consecutive_failures > 0).then_some(Breaker {
        failures: cb.consecutive_failures,
        cooldown,
        max_cooldown,
    })
}

fn check_event_types(spec: &WebhookSubscriptionSpec, problems: &mut Vec<Problem>) {
    if spec.event_types.is_empty() || spec.event_types.len() > 100 {
        problems.push(Problem::new("spec.eventTypes", "must list between 1 and 100 event types"));
    }
    for (i, t) in spec.event_types.iter().enumerate() {
        if !is_event_type_pattern(t) {
            problems.push(Problem::new(
                format!("spec.eventTypes[{i}]"),
                format!("{t:?} is not an event type, a prefix wildcard (`order.*`) or `*`"),
            ));
        }
    }
}

/// `*`, or a type made of `[A-Za-z0-9._-]` starting with an alphanumeric, optionally ending in `.*`.
pub fn is_event_type_pattern(t: &str) -> bool {
    if t == "*" {
        return true;
    }
    let base = t.strip_suffix(".*").unwrap_or(t);
    !base.is_empty()
        && base.len() <= 253
        && base.starts_with(|c: char| c.is_ascii_alphanumeric())
        && base.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_endpoint(spec: &WebhookSubscriptionSpec, policy: Policy, problems: &mut Vec<Problem>) {
    let ep = &spec.endpoint;
    if ep.url.len() > 1000 {
        problems.push(Problem::new("spec.endpoint.url", "must be at most 1000 characters"));
    }
    match url::Url::parse(&ep.url) {
        Err(e) => problems.push(Problem::new("spec.endpoint.url", format!("is not a valid URL ({e})"))),
        Ok(url) => {
            match url.scheme() {
                "https" => {}
                "http" if policy.allow_http => {}
                "http" => problems.push(Problem::new(
                    "spec.endpoint.url",
                    "plain http:// is not allowed: use https:// (or start the operator with --allow-http)",
                )),
                other => problems.push(Problem::new(
                    "spec.endpoint.url",
                    format!("scheme {other:?} is not supported: use https://"),
                )),
            }
            if url.host_str().is_none_or(str::is_empty) {
                problems.push(Problem::new("spec.endpoint.url", "has no host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                problems.push(Problem::new(
                    "spec.endpoint.url",
                    "must not carry credentials (user:password@); use endpoint.headersFrom with a Secret",
                ));
            }
        }
    }
    if !(1..=30).contains(&ep.timeout_seconds) {
        problems.push(Problem::new("spec.endpoint.timeoutSeconds", "must be between 1 and 30"));
    }
    for (name, value) in &ep.headers {
        let field = format!("spec.endpoint.headers[{name}]");
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str())
            || RESERVED_HEADER_PREFIXES.iter().any(|p| lower.starts_with(p))
        {
            problems.push(Problem::new(field, "is a reserved header that Hookline sets itself"));
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(Problem::new(field, "is not a valid HTTP header name"));
        } else if http::HeaderValue::from_str(value).is_err() {
            problems.push(Problem::new(field, "has a value that is not a valid HTTP header value"));
        }
    }
}

/// A Kubernetes DNS subdomain name (RFC 1123), the rule for Secret names.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Render problems as one condition message.
pub fn describe(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests;
