//! Trace context end to end: a publish's `traceparent` reaches every delivery request as a
//! `traceparent` of the same trace, and with `--otlp-endpoint` Hookline's spans (publish, each
//! delivery attempt, the handshake) arrive at a local OTLP/HTTP collector, which decodes them here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{LOCAL, TestEnv, wait_until};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use hookline::api::WebhookSubscription;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(45);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// A local OTLP/HTTP collector keeping every span it is sent (JSON encoding).
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        async fn traces(State(spans): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> &'static str {
            let request: Value = serde_json::from_slice(&body).expect("OTLP/HTTP JSON");
            let found = request["resourceSpans"].as_array().into_iter().flatten().flat_map(|r| {
                r["scopeSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["spans"].as_array().into_iter().flatten())
            });
            spans.lock().expect("lock").extend(found.cloned());
            "{}"
        }
        let app = Router::new().route("/v1/traces", post(traces)).with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    /// The spans named `name` of trace `trace` (any trace: `None`), once there are `n`.
    async fn spans(&self, name: &str, trace: Option<&str>, n: usize) -> Vec<Value> {
        wait_until(&format!("{n} {name} spans"), WAIT, || async {
            let spans: Vec<Value> = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s["name"] == name && trace.is_none_or(|t| s["traceId"] == t))
                .cloned()
                .collect();
            (spans.len() >= n).then_some(spans)
        })
        .await
    }
}

/// An attribute's value as a string (OTLP JSON writes integers as strings or numbers).
fn attribute(span: &Value, key: &str) -> String {
    let value = span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or(Value::Null);
    match (&value["stringValue"], &value["intValue"]) {
        (Value::String(s), _) => s.clone(),
        (_, Value::String(i)) => i.clone(),
        (_, Value::Number(i)) => i.to_string(),
        _ => format!("{value}"),
    }
}

/// `traceparent`'s trace id and parent id.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "a W3C traceparent: {traceparent:?}");
    (fields[1].to_string(), fields[2].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_spans_link_the_producer_hookline_and_every_attempt_in_one_trace() {
    let env = TestEnv::with_crds("traces-otlp").await;
    let collector = Collector::start().await;
    let otlp = format!("--otlp-endpoint={}", collector.url);
    let h = env.start_hookline(&[LOCAL, &[otlp.as_str()]].concat()).await;
    let rx = Receiver::start().await;
    // The first attempt fails, the retry is delivered: two attempts, two spans.
    rx.script([Reply::Status(503)]);
    // Verified by the event handshake, which the receiver answers.
    let mut sub =
        serde_json::to_value(WebhookSubscription::test("orders", &rx.url).failing_fast()).expect("json");
    crate::support::merge(&mut sub, json!({"spec": {"validation": {"method": "Event"}}}));
    env.create_active(serde_json::from_value(sub).expect("subscription")).await;
    let traceparent = format!("00-{TRACE}-{PRODUCER_SPAN}-01");
    let (status, body) = h
        .publish(
            &env.namespace,
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "t1"),
                ("ce-source", "/shop"),
                ("ce-type", "order.created"),
                ("content-type", "application/json"),
                ("traceparent", &traceparent),
            ],
            r#"{"order": 1}"#,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let requests = rx.wait_for(2, WAIT).await;

    let publish = collector.spans("publish", Some(TRACE), 1).await.remove(0);
    assert_eq!(publish["parentSpanId"], PRODUCER_SPAN, "the publish continues the producer's span");
    assert_eq!(attribute(&publish, "hookline.namespace"), env.namespace);
    assert_eq!(attribute(&publish, "http.response.status_code"), "202");
    let publish_id = publish["spanId"].as_str().expect("span id").to_string();

    let mut attempts = collector.spans("deliver", Some(TRACE), 2).await;
    attempts.sort_by_key(|s| attribute(s, "hookline.attempt"));
    let subscription = format!("{}/orders", env.namespace);
    for (n, (span, status)) in attempts.iter().zip(["503", "200"]).enumerate() {
        assert_eq!(span["parentSpanId"], publish_id.as_str(), "attempt {} is a child of the publish", n + 1);
        assert_eq!(attribute(span, "hookline.attempt"), (n + 1).to_string());
        assert_eq!(attribute(span, "hookline.subscription"), subscription);
        assert_eq!(attribute(span, "http.response.status_code"), status);
        assert_eq!(attribute(span, "cloudevents.event_id"), "t1");
        // The receiver's request carries this attempt's span as its parent.
        let (trace, parent) = parts(&requests[n].header("traceparent"));
        assert_eq!((trace.as_str(), parent.as_str()), (TRACE, span["spanId"].as_str().expect("span id")));
    }
    // The event's own tracing extension names Hookline's publish span.
    let (trace, parent) = parts(&requests[1].header("ce-traceparent"));
    assert_eq!((trace.as_str(), parent.as_str()), (TRACE, publish_id.as_str()));

    let handshake = collector.spans("handshake", None, 1).await.remove(0);
    assert_eq!(attribute(&handshake, "hookline.subscription"), subscription);
    assert_eq!(attribute(&handshake, "http.response.status_code"), "200");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_export_the_events_own_trace_context_reaches_the_receiver() {
    let env = TestEnv::with_crds("traces-plain").await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("orders", &rx.url)).await;
    let traceparent = format!("00-{TRACE}-{PRODUCER_SPAN}-01");
    // Structured mode, the context in the CloudEvents tracing extension.
    h.publish_json(
        &env.namespace,
        json!({"specversion": "1.0", "id": "p1", "source": "/shop", "type": "order.created",
               "traceparent": traceparent, "tracestate": "vendor=1", "data": {}}),
    )
    .await;
    // A batch with the context in the request's header: each event carries it on.
    let batch = json!([
        {"specversion": "1.0", "id": "p2", "source": "/shop", "type": "order.created", "data": {}},
        {"specversion": "1.0", "id": "p3", "source": "/shop", "type": "order.created", "data": {}},
    ]);
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let (status, body) = h
        .publish(
            &env.namespace,
            &[("content-type", "application/cloudevents-batch+json"), ("traceparent", other)],
            batch.to_string(),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let requests = rx.wait_for(3, WAIT).await;
    for request in &requests {
        let expected = if request.header("ce-id") == "p1" { traceparent.as_str() } else { other };
        assert_eq!(request.header("traceparent"), expected, "{}", request.header("ce-id"));
    }
    let p1 = requests.iter().find(|r| r.header("ce-id") == "p1").expect("p1");
    assert_eq!(p1.header("tracestate"), "vendor=1");
}
