//! `POST /v1/namespaces/{ns}/events`: CloudEvents in binary, structured or batch mode, stored
//! and routed before the `202`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;
use utoipa::ToSchema;

use super::auth::PUBLISH;
use super::error::{ApiError, ErrorBody};
use super::{IngestState, content_type, openapi};
use crate::delivery::{Incoming, Routed};
use crate::event::{BATCH, CloudEvent, STRUCTURED};
use crate::report::Chain;
use crate::store::StoreError;
use crate::telemetry;

/// Largest batch body, as a multiple of the per-event cap.
const BATCH_FACTOR: usize = 16;

/// The answer to an accepted publish: one entry per event, in the order sent.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The events, as stored and routed.
    pub events: Vec<AcceptedEvent>,
}

/// One accepted event.
#[derive(Serialize, ToSchema)]
pub struct AcceptedEvent {
    /// The event's `id`.
    pub id: String,
    /// The event's `source`.
    pub source: String,
    /// How many subscriptions it was queued for (0 when none wants it: it is not kept).
    pub matched: usize,
    /// The same `source` and `id` were accepted before, within the deduplication window:
    /// nothing was queued again.
    pub duplicate: bool,
}

impl From<Routed> for AcceptedEvent {
    fn from(r: Routed) -> Self {
        Self { id: r.id, source: r.source, matched: r.matched, duplicate: r.duplicate }
    }
}

/// Publish CloudEvents to the subscriptions of a namespace.
///
/// One event in binary mode (`ce-*` headers, the body is `data`) or structured mode
/// (`application/cloudevents+json`), or several as a batch (`application/cloudevents-batch+json`).
/// `202` only once every event of the request is stored: accepted events are delivered even
/// if Hookline restarts. Any refusal refuses the whole request and stores nothing.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/events",
    tag = "events",
    operation_id = "publish",
    params(
        ("ns" = String, Path, description = "The namespace whose subscriptions get the events."),
        ("ce-specversion" = Option<String>, Header, description = "Binary mode: `1.0`. With this header the request is one event in binary mode and the other attributes come from `ce-*` headers (`ce-id`, `ce-source`, `ce-type` required; `ce-subject`, `ce-time`, `ce-dataschema` and extensions optional, percent-encoded); `content-type` is the event's `datacontenttype`."),
        ("traceparent" = Option<String>, Header, description = "A W3C trace context, carried on to every delivery of the events."),
    ),
    request_body(
        description = "The events, in one of the three modes.",
        content(
            (openapi::StructuredEvent = "application/cloudevents+json"),
            (Vec<openapi::StructuredEvent> = "application/cloudevents-batch+json"),
            ("*/*"),
        ),
    ),
    responses(
        (status = 202, description = "Every event is stored and queued for its subscriptions.", body = Accepted),
        (status = 400, description = "An event breaks the CloudEvents rules (`attribute` names the attribute, `batch[i].…` in a batch), its `data` does not match its EventType's schema (`attribute` `data` or `batch[i].data`, `index`, `pointer`), or the namespace name is invalid.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--read-timeout`; nothing was accepted and the connection is closed.", body = ErrorBody),
        (status = 413, description = "The body, or one event of a batch (`attribute` `batch[i]`), exceeds `--max-event-bytes` (a batch may be 16 times that); a `Content-Length` over the limit is refused before the body is read.", body = ErrorBody),
        (status = 415, description = "Neither structured nor batch content type, nor binary mode (no `ce-specversion` header).", body = ErrorBody),
        (status = 507, description = "The store is short of space (below `--min-free-disk`, or its disk is full); nothing was accepted.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before publishing again."))),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
pub(super) async fn publish(
    State(state): State<IngestState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::SystemTime::now();
    state.admit(&headers, &ns, PUBLISH).await?;
    let max = state.config.max_event_bytes;
    let ct = content_type(&headers);
    let mut events: Vec<CloudEvent> = if ct == STRUCTURED {
        vec![CloudEvent::from_structured(&state.read_body(body, max).await?).map_err(ApiError::bad_event)?]
    } else if ct == BATCH {
        CloudEvent::from_batch(&state.read_body(body, max * BATCH_FACTOR).await?)
            .map_err(ApiError::bad_event)?
    } else if headers.contains_key("ce-specversion") {
        CloudEvent::from_binary(&headers, state.read_body(body, max).await?)
            .map(|e| vec![e])
            .map_err(ApiError::bad_event)?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {ct:?}: publish in binary mode (ce-* headers), as {STRUCTURED}, or as {BATCH}"
            ),
        ));
    };
    // The trace context each event carries on to its deliveries (see `telemetry`).
    let span = telemetry::publish(&headers, &ns, &mut events, started);
    let answer = store(&state, &ns, events, ct == BATCH).await;
    span.end(answer.as_ref().map_or_else(|e| e.status.as_u16(), |_| StatusCode::ACCEPTED.as_u16()));
    let events = answer?.into_iter().map(AcceptedEvent::from).collect();
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { events })).into_response())
}

/// Route and store parsed events (each within the per-event limit once serialized; a batch names
/// the one that is not).
async fn store(
    state: &IngestState,
    ns: &str,
    events: Vec<CloudEvent>,
    batch: bool,
) -> Result<Vec<Routed>, ApiError> {
    let max = state.config.max_event_bytes;
    for (i, event) in events.iter().enumerate() {
        state.catalog.check(ns, event).map_err(|r| ApiError::bad_data(r, batch.then_some(i)))?;
    }
    let events: Vec<Incoming> = events.into_iter().map(Incoming::from).collect();
    if batch && let Some(i) = events.iter().position(|e| e.json.len() > max) {
        return Err(ApiError {
            attribute: Some(format!("batch[{i}]")),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("batch[{i}] exceeds the per-event limit of {max} bytes"),
            )
        });
    }
    state.check_room().await?;
    state.dispatchers.route(&state.registry, ns, events).await.map_err(|e| {
        state.metrics.store_failed(e.metric_label());
        store_refusal(ns, e)
    })
}

/// The answer to a publish the store could not take: 507 when its disk is full, else 503.
fn store_refusal(ns: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::Full => ApiError::insufficient_storage(
            "the event store's disk is full; nothing was accepted, retry later (delivered events free space)",
        ),
        e => {
            warn!(namespace = %ns, error = %Chain(&e), "storing events failed");
            ApiError::unavailable("the event could not be stored; nothing was accepted, retry later")
        }
    }
}
