//! Traces. A publish's W3C trace context (the `traceparent` HTTP header, or the event's own
//! CloudEvents `traceparent` extension) travels with the stored event, and every delivery request
//! carries a `traceparent` of the same trace, so a receiver's spans join the producer's. With
//! `--otlp-endpoint`, Hookline's own spans (publish, each delivery attempt, handshakes) are
//! exported over OTLP/HTTP (JSON) and sit between them; without it nothing is recorded and the
//! producer's context is passed on unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::event::{CloudEvent, ExtValue};

/// The CloudEvents distributed-tracing extension attribute (and W3C header) that only some
/// contexts have.
const TRACESTATE: &str = "tracestate";

/// Whether spans are exported (then Hookline's spans become the parents of what follows).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Exporting could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up OTLP trace export to {endpoint}")]
pub struct Error {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The span exporter, while it runs; [`Tracing::shutdown`] sends what is left.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

/// Export spans to the OTLP/HTTP collector at `endpoint` (its base URL: spans go to
/// `<endpoint>/v1/traces`), or record none.
pub fn init(endpoint: Option<&str>) -> Result<Tracing, Error> {
    let Some(endpoint) = endpoint else { return Ok(Tracing { provider: None }) };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .map_err(|source| Error { endpoint: endpoint.to_string(), source })?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("hookline").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    global::set_tracer_provider(provider.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Tracing { provider: Some(provider) })
}

impl Tracing {
    /// Export the spans still buffered (at shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "exporting the last spans");
        }
    }
}

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn tracer() -> opentelemetry::global::BoxedTracer {
    global::tracer_provider().tracer("hookline")
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Extensions<'a>(&'a CloudEvent);

impl Extractor for Extensions<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.extensions.get(key) {
            Some(ExtValue::String(v)) => Some(v),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.extensions.keys().map(String::as_str).collect()
    }
}

/// A valid remote context read by `extractor`.
fn extract(extractor: &dyn Extractor) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(extractor);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` and `tracestate` (when not empty) of `cx`.
fn inject(cx: &Context) -> Vec<(String, String)> {
    struct Pairs(Vec<(String, String)>);
    impl Injector for Pairs {
        fn set(&mut self, key: &str, value: String) {
            if !value.is_empty() {
                self.0.push((key.to_string(), value));
            }
        }
    }
    let mut pairs = Pairs(Vec::new());
    TraceContextPropagator::new().inject_context(cx, &mut pairs);
    pairs.0
}

fn span_context(cx: &Context) -> SpanContext {
    cx.span().span_context().clone()
}

/// The span of one publish request (ingest and the store's commit), if spans are exported.
pub struct Publish {
    cx: Option<Context>,
}

/// Start the publish of `events` to `namespace`: read the trace context the request carries (its
/// `traceparent` header; for a single event, else the event's own extension) and decide the
/// context each event carries on. An event that brings a trace of its own keeps it; the others
/// carry the request's, through Hookline's publish span when spans are exported.
/// `started`: when the request arrived.
pub fn publish(
    headers: &HeaderMap,
    namespace: &str,
    events: &mut [CloudEvent],
    started: SystemTime,
) -> Publish {
    let from_request = extract(&Headers(headers));
    let parent = from_request.clone().or_else(|| match events {
        [single] => extract(&Extensions(single)),
        _ => None,
    });
    let cx = exporting().then(|| {
        let tracer = tracer();
        let span = tracer
            .span_builder("publish")
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("hookline.namespace", namespace.to_string()),
                KeyValue::new("messaging.batch.message_count", events.len() as i64),
            ])
            .start_with_context(&tracer, parent.as_ref().unwrap_or(&Context::new()));
        Context::new().with_span(span)
    });
    let carried = cx.as_ref().or(parent.as_ref());
    if let Some(carried) = carried {
        let parent_span = parent.as_ref().map(span_context);
        let fields = inject(carried);
        for event in events.iter_mut() {
            let own = extract(&Extensions(event)).map(|cx| span_context(&cx));
            if own.is_none() || own == parent_span {
                event.extensions.remove(TRACESTATE);
                for (k, v) in &fields {
                    event.extensions.insert(k.clone(), ExtValue::String(v.clone()));
                }
            }
        }
    }
    Publish { cx }
}

impl Publish {
    /// The publish was answered with `status`.
    pub fn end(self, status: u16) {
        if let Some(cx) = self.cx {
            let span = cx.span();
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            if status >= 400 {
                span.set_status(Status::error(format!("answered {status}")));
            }
            span.end();
        }
    }
}

/// The span of one delivery attempt (if spans are exported), and the trace headers its request
/// carries.
pub struct Attempt {
    span: Option<opentelemetry::global::BoxedSpan>,
    /// `traceparent` (and `tracestate`) for the request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Start attempt `attempt` of delivering `event` to subscription `namespace`/`name` at `url`.
pub fn attempt(event: &CloudEvent, namespace: &str, name: &str, attempt: u32, url: &str) -> Attempt {
    let parent = extract(&Extensions(event));
    let (span, cx) = if exporting() {
        let tracer = tracer();
        let span = tracer
            .span_builder("deliver")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("hookline.subscription", format!("{namespace}/{name}")),
                KeyValue::new("hookline.attempt", i64::from(attempt)),
                KeyValue::new("cloudevents.event_id", event.id.clone()),
                KeyValue::new("cloudevents.event_source", event.source.clone()),
                KeyValue::new("cloudevents.event_type", event.type_.clone()),
                KeyValue::new("url.full", url.to_string()),
            ])
            .start_with_context(&tracer, parent.as_ref().unwrap_or(&Context::new()));
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        (Some(span), Some(cx))
    } else {
        (None, parent)
    };
    let headers = cx.as_ref().map(inject).unwrap_or_default();
    Attempt { span, headers: header_pairs(headers) }
}

fn header_pairs(pairs: Vec<(String, String)>) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(&v).ok()?))
        })
        .collect()
}

impl Attempt {
    /// The endpoint answered `status` (`None`: no answer, with `error`).
    pub fn end(self, status: Option<u16>, error: Option<&str>) {
        if let Some(mut span) = self.span {
            if let Some(code) = status {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
            }
            if !status.is_some_and(|c| (200..300).contains(&c)) {
                let what = error.map(str::to_string).or(status.map(|c| format!("answered {c}")));
                span.set_status(Status::error(what.unwrap_or_default()));
            }
            span.end();
        }
    }
}

/// The span of one handshake request (if spans are exported), and its trace headers.
pub fn handshake(namespace: &str, name: &str, method: &str) -> Attempt {
    if !exporting() {
        return Attempt { span: None, headers: Vec::new() };
    }
    let tracer = tracer();
    let span = tracer
        .span_builder("handshake")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("hookline.subscription", format!("{namespace}/{name}")),
            KeyValue::new("hookline.handshake.method", method.to_string()),
        ])
        .start(&tracer);
    let cx = Context::new().with_remote_span_context(span.span_context().clone());
    Attempt { span: Some(span), headers: header_pairs(inject(&cx)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "traceparent";
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn event(id: &str, traceparent: Option<&str>) -> CloudEvent {
        let mut e = CloudEvent::from_structured(
            format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#).as_bytes(),
        )
        .expect("event");
        if let Some(tp) = traceparent {
            e.extensions.insert(TRACEPARENT.into(), ExtValue::String(tp.into()));
        }
        e
    }

    fn carried(e: &CloudEvent) -> Option<String> {
        match e.extensions.get(TRACEPARENT) {
            Some(ExtValue::String(v)) => Some(v.clone()),
            _ => None,
        }
    }

    #[test]
    fn without_export_the_requests_context_is_passed_on_and_an_events_own_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(PARENT));
        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut events = [event("a", None), event("b", Some(own)), event("c", Some("garbage"))];
        publish(&headers, "shop", &mut events, SystemTime::now()).end(202);
        assert_eq!(carried(&events[0]).as_deref(), Some(PARENT));
        assert_eq!(carried(&events[1]).as_deref(), Some(own), "an event's own trace is kept");
        assert_eq!(carried(&events[2]).as_deref(), Some(PARENT), "an invalid one is replaced");
        let attempt = attempt(&events[1], "shop", "orders", 1, "https://example.com");
        assert_eq!(attempt.headers.len(), 1);
        assert_eq!(attempt.headers[0].1, own, "the receiver's request continues the event's trace");
    }

    #[test]
    fn an_event_without_any_context_carries_none() {
        let mut events = [event("a", None)];
        publish(&HeaderMap::new(), "shop", &mut events, SystemTime::now()).end(202);
        assert_eq!(carried(&events[0]), None);
        assert!(attempt(&events[0], "shop", "orders", 1, "https://example.com").headers.is_empty());
    }
}
