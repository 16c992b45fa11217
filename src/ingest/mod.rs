//! The ingest and API server on `--ingest-addr`: publishing CloudEvents, the delivery log, and
//! test events. Every answer is JSON; every refusal names the problem.

pub mod auth;
pub mod openapi;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::WebhookSubscription;
use crate::catalog::{Catalog, DataRefusal};
use crate::delivery::{Dispatchers, Incoming, Routed};
use crate::event::{BATCH, CloudEvent, EventError, STRUCTURED};
use crate::metrics::Metrics;
use crate::registry::Readiness;
use crate::registry::Registry;
use crate::report::Chain;
use crate::store::{LogCursor, LogEntry, LogQuery, LogScope, OutcomeFilter, Store, StoreError};
use crate::telemetry;
use auth::{Action, Auth, LIST_LOG, PUBLISH, READ_LOG, SEND_TEST};

/// A refusal: HTTP status plus a JSON body naming the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// The event attribute at fault, for a refused event.
    pub attribute: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
    /// The position of the refused event in a batch.
    pub index: Option<usize>,
    /// The JSON pointer into the event's `data` of the value that broke its EventType's schema.
    pub pointer: Option<String>,
}

/// What a publisher refused for want of space is told to wait before trying again.
const FULL_RETRY_AFTER_SECS: u64 = 10;

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            attribute: None,
            retry_after: None,
            index: None,
            pointer: None,
        }
    }
    /// 507: the store has no room; nothing was accepted, and a retry later may succeed.
    fn insufficient_storage(m: impl Into<String>) -> Self {
        Self { retry_after: Some(FULL_RETRY_AFTER_SECS), ..Self::new(StatusCode::INSUFFICIENT_STORAGE, m) }
    }
    /// 401: no or an invalid token.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    /// 403: the caller may not do this in the namespace.
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    /// 503: Hookline or a service it needs cannot take the request now; retry.
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    fn bad_event(e: EventError) -> Self {
        Self { attribute: Some(e.attribute.clone()), ..Self::new(StatusCode::BAD_REQUEST, e.to_string()) }
    }
    /// 400: the event's data does not match its EventType's schema; `index` in a batch.
    fn bad_data(refusal: DataRefusal, index: Option<usize>) -> Self {
        let attribute = index.map_or_else(|| "data".to_string(), |i| format!("batch[{i}].data"));
        let message = match index {
            Some(i) => format!("batch[{i}]: {}", refusal.message),
            None => refusal.message,
        };
        Self {
            attribute: Some(attribute),
            index,
            pointer: Some(refusal.pointer),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }
}

/// The body of every refusal: what went wrong and, for a refused event, where.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for the caller.
    #[schema(example = "type: must be a non-empty string")]
    pub error: String,
    /// The event attribute at fault (`id`, `batch[3].source`, `data`, `body`, …), for a refused
    /// event or test body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub attribute: Option<String>,
    /// The position of the refused event in a batch, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub index: Option<usize>,
    /// The JSON pointer into the event's `data` of the value that broke its EventType's schema
    /// (`""` for `data` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/amount", nullable = false)]
    pub pointer: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            attribute: self.attribute,
            index: self.index,
            pointer: self.pointer,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Settings of the ingest server.
#[derive(Clone)]
pub struct IngestConfig {
    /// Largest accepted event (a single-event body, or one event of a batch).
    pub max_event_bytes: usize,
    /// Below this many bytes free for the store, publishing is refused with 507, keeping the
    /// room the store needs to record deliveries and free space (`--min-free-disk`).
    pub min_free_disk: u64,
}

/// What the ingest server works with.
#[derive(Clone)]
pub struct Ingest {
    /// Limits of the ingest server.
    pub config: IngestConfig,
    /// How callers are authenticated and authorized.
    pub auth: Auth,
    /// The active subscriptions events are routed to.
    pub registry: Registry,
    /// Stores and routes accepted events, sends test events.
    pub dispatchers: Arc<Dispatchers>,
    /// Nothing is accepted until Hookline is ready.
    pub readiness: Readiness,
    /// Kubernetes client (namespace and subscription lookups).
    pub client: Client,
    /// The store, asked for free space before events are accepted.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The EventTypes whose schemas published data must match.
    pub catalog: Catalog,
}

#[derive(Clone)]
struct IngestState {
    parts: Arc<Ingest>,
    /// Namespaces known to exist, and since when.
    namespaces: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::ops::Deref for IngestState {
    type Target = Ingest;

    fn deref(&self) -> &Ingest {
        &self.parts
    }
}

/// Largest batch body, as a multiple of the per-event cap.
const BATCH_FACTOR: usize = 16;
/// How long a namespace known to exist is not looked up again.
const NAMESPACE_TTL: Duration = Duration::from_secs(30);

/// The routes of the API, each with its OpenAPI description: the router and the document come
/// from this one list.
fn routes() -> OpenApiRouter<IngestState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(publish))
        .routes(routes!(namespace_deliveries))
        .routes(routes!(deliveries))
        .routes(routes!(test_event))
        .routes(routes!(validate))
        .routes(routes!(openapi::serve))
}

/// Bind the ingest server; returns the bound address and the future that serves it until
/// `shutdown`. From `draining` on, every answer closes its connection (see
/// [`crate::server::close_connections_when`]).
pub async fn bind(
    addr: SocketAddr,
    ingest: Ingest,
    draining: CancellationToken,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let state = IngestState { parts: Arc::new(ingest), namespaces: Arc::default() };
    let (router, _) = routes().split_for_parts();
    let app = crate::server::close_connections_when(router.with_state(state), draining);
    crate::server::serve(addr, app, shutdown).await
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl IngestState {
    /// Refuse new events (507) while the store is short of space, so what it holds can still be
    /// delivered and recorded; publishing resumes as delivered events free their space.
    async fn check_room(&self) -> Result<(), ApiError> {
        let min = self.config.min_free_disk;
        let free = self.store.free_bytes(min).await.map_err(|e| {
            self.metrics.store_failed(e.metric_label());
            warn!(error = %Chain(&e), "reading the store's free space failed");
            ApiError::unavailable("the event store is unavailable; nothing was accepted, retry later")
        })?;
        // A database server's volume is its own: a full one fails the commit, which answers 507.
        let Some(free) = free else { return Ok(()) };
        self.metrics.set_store_free_bytes(free);
        if free < min {
            return Err(ApiError::insufficient_storage(format!(
                "the event store is short of space: {} MiB free, below the {} MiB kept for delivering \
                 what is queued (--min-free-disk); nothing was accepted, retry later",
                free >> 20,
                min >> 20
            )));
        }
        Ok(())
    }

    /// The checks every request passes: ready, a valid namespace, an allowed caller, and the
    /// namespace exists.
    async fn admit(&self, headers: &HeaderMap, ns: &str, action: Action) -> Result<(), ApiError> {
        if let Some(what) = self.readiness.missing() {
            return Err(ApiError::unavailable(format!(
                "Hookline is not ready ({what}); nothing was accepted, retry later"
            )));
        }
        if !is_dns_label(ns) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{ns:?} is not a valid namespace name"),
            ));
        }
        self.auth.authorize(headers, ns, action).await?;
        self.namespace_exists(ns).await
    }

    async fn namespace_exists(&self, ns: &str) -> Result<(), ApiError> {
        if self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .is_some_and(|t| t.elapsed() < NAMESPACE_TTL)
        {
            return Ok(());
        }
        match Api::<Namespace>::all(self.client.clone()).get_metadata_opt(ns).await {
            Ok(Some(_)) => {
                self.namespaces
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ns.to_string(), Instant::now());
                Ok(())
            }
            Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, format!("namespace {ns} not found"))),
            Err(e) => Err(ApiError::unavailable(format!("checking namespace {ns}: {}", Chain(&e)))),
        }
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    })
}

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
        (status = 413, description = "The body, or one event of a batch (`attribute` `batch[i]`), exceeds `--max-event-bytes` (a batch may be 16 times that).", body = ErrorBody),
        (status = 415, description = "Neither structured nor batch content type, nor binary mode (no `ce-specversion` header).", body = ErrorBody),
        (status = 507, description = "The store is short of space (below `--min-free-disk`, or its disk is full); nothing was accepted.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before publishing again."))),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
async fn publish(
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
        vec![CloudEvent::from_structured(&read_body(body, max).await?).map_err(ApiError::bad_event)?]
    } else if ct == BATCH {
        CloudEvent::from_batch(&read_body(body, max * BATCH_FACTOR).await?).map_err(ApiError::bad_event)?
    } else if headers.contains_key("ce-specversion") {
        CloudEvent::from_binary(&headers, read_body(body, max).await?)
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

/// The query of a delivery-log request: paging and filters. Anything else is refused.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Attempts per page (default 50; clamped to 1–500).
    limit: Option<u32>,
    /// Where the page starts: `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Only the attempts of this subscription (by name; not on the subscription's own log).
    subscription: Option<String>,
    /// `delivered`, `failed` (any attempt that did not deliver), or one exact outcome.
    #[param(schema_with = openapi::outcome_filter_schema)]
    outcome: Option<String>,
    /// Only attempts of events of this `type`.
    event_type: Option<String>,
    /// Only attempts of the event with this `id` (as a publish or test answered it).
    event_id: Option<String>,
    /// Only attempts that ended at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only attempts that ended before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
}

/// A page of the delivery log, newest attempt first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    /// The attempts.
    pub items: Vec<LogEntry>,
    /// The `cursor` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Read a delivery-log query, naming the parameter at fault.
fn log_params(uri: &axum::http::Uri) -> Result<LogParams, ApiError> {
    Query::<LogParams>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        bad_query(format!(
            "{}; the parameters are limit, cursor, subscription, outcome, eventType, eventId, since and until",
            e.body_text()
        ))
    })
}

impl LogParams {
    /// The store query for `scope`.
    fn query(&self, scope: LogScope) -> Result<LogQuery, ApiError> {
        let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            value
                .as_deref()
                .map(|v| {
                    v.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).map_err(|e| {
                        bad_query(format!(
                            "{name}: {v:?} is not an RFC 3339 time, e.g. 2026-12-02T09:00:00Z ({e})"
                        ))
                    })
                })
                .transpose()
        };
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                OutcomeFilter::parse(o).ok_or_else(|| {
                    bad_query(format!(
                        "outcome: {o:?} is not one of delivered, failed (any attempt that did not deliver), {}",
                        OutcomeFilter::OUTCOMES[1..].join(", ")
                    ))
                })
            })
            .transpose()?;
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        let (at, seq) = s.split_once('.')?;
                        Some(LogCursor { at: at.parse().ok()?, seq: seq.parse().ok()? })
                    })
                    .ok_or_else(|| bad_query("cursor: not one this server issued"))?,
            ),
        };
        let nonempty = |name: &str, v: &Option<String>| match v.as_deref() {
            Some("") => Err(bad_query(format!("{name}: must not be empty"))),
            _ => Ok(v.clone()),
        };
        Ok(LogQuery {
            scope,
            outcome,
            event_type: nonempty("eventType", &self.event_type)?,
            event_id: nonempty("eventId", &self.event_id)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            after,
            limit: self.limit.unwrap_or(50).clamp(1, 500),
        })
    }
}

/// Run a log query and answer with its page and the cursor of the next one.
async fn log_page(state: &IngestState, query: LogQuery, name: Option<&str>) -> Result<Response, ApiError> {
    let limit = query.limit;
    let mut entries = state
        .store
        .deliveries(query)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the delivery log: {}", Chain(&e))))?;
    // Attempts logged before the log named their subscription: the path names it.
    if let Some(name) = name {
        for e in entries.iter_mut().filter(|e| e.subscription.is_none()) {
            e.subscription = Some(name.to_string());
        }
    }
    let next = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| URL_SAFE_NO_PAD.encode(format!("{}.{}", e.at_ms, e.seq))))
        .flatten();
    Ok(axum::Json(DeliveryPage { items: entries, next_cursor: next }).into_response())
}

async fn subscription_uid(state: &IngestState, ns: &str, name: &str) -> Result<String, ApiError> {
    let api: Api<WebhookSubscription> = Api::namespaced(state.client.clone(), ns);
    match api.get_metadata_opt(name).await {
        Ok(Some(meta)) => {
            meta.metadata.uid.ok_or_else(|| ApiError::unavailable("the subscription has no uid"))
        }
        Ok(None) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("webhooksubscription {ns}/{name} not found")))
        }
        Err(e) => {
            Err(ApiError::unavailable(format!("reading webhooksubscription {ns}/{name}: {}", Chain(&e))))
        }
    }
}

/// The delivery log of one subscription: every attempt to deliver an event to it.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/webhooksubscriptions/{name}/deliveries",
    tag = "deliveries",
    operation_id = "listSubscriptionDeliveries",
    params(
        ("ns" = String, Path, description = "The subscription's namespace."),
        ("name" = String, Path, description = "The subscription's name."),
        LogParams,
    ),
    responses(
        (status = 200, description = "A page of the subscription's delivery log (the caller may `get` it).", body = DeliveryPage),
        (status = 400, description = "An unknown parameter, a bad value (named), `subscription` (the path names it), or an invalid namespace name.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
async fn deliveries(
    State(state): State<IngestState>,
    Path((ns, name)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, READ_LOG).await?;
    let params = log_params(&uri)?;
    if params.subscription.is_some() {
        return Err(bad_query("subscription: the path names the subscription already"));
    }
    let uid = subscription_uid(&state, &ns, &name).await?;
    let query = params.query(LogScope::Subscription(uid))?;
    log_page(&state, query, Some(&name)).await
}

/// The delivery log of every subscription of a namespace (or of one, by name).
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/deliveries",
    tag = "deliveries",
    operation_id = "listDeliveries",
    params(
        ("ns" = String, Path, description = "The namespace."),
        LogParams,
    ),
    responses(
        (status = 200, description = "A page of the namespace's delivery log (the caller may `list` its subscriptions).", body = DeliveryPage),
        (status = 400, description = "An unknown parameter, a bad value (named), or an invalid namespace name.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
async fn namespace_deliveries(
    State(state): State<IngestState>,
    Path(ns): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, LIST_LOG).await?;
    let params = log_params(&uri)?;
    let (scope, name) = match &params.subscription {
        Some(name) => {
            (LogScope::Subscription(subscription_uid(&state, &ns, name).await?), Some(name.as_str()))
        }
        None => (LogScope::Namespace(ns.clone()), None),
    };
    let query = params.query(scope)?;
    log_page(&state, query, name).await
}

/// The body of a test request: a chosen type and data, instead of the fixed ping.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TestBody {
    /// The event's `type` (default `dev.hookline.test`).
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    type_: Option<String>,
    /// The event's `data`, checked against the type's EventType schema like a publish.
    data: Option<serde_json::Value>,
}

/// The answer to a test request.
#[derive(Serialize, ToSchema)]
pub struct TestSent {
    /// The test event's `id`: the `eventId` filter of the delivery log finds its attempts.
    pub id: String,
    /// Subscriptions it was queued for: 1, the one named.
    pub matched: usize,
}

/// Send a test event to one subscription, whatever its event types and filters.
///
/// Without a body it is the ping (`dev.hookline.test`); with one, an event of the chosen type
/// and data.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/webhooksubscriptions/{name}/test",
    tag = "webhooksubscriptions",
    operation_id = "sendTestEvent",
    params(
        ("ns" = String, Path, description = "The subscription's namespace."),
        ("name" = String, Path, description = "The subscription's name."),
    ),
    request_body(content = Option<TestBody>, content_type = "application/json", description = "Optional: the test event's type and data."),
    responses(
        (status = 202, description = "The test event is stored and queued for the subscription (the caller may `update` it).", body = TestSent),
        (status = 400, description = "The body is not `{\"type\": string, \"data\": any}` (`attribute` `body`), the type is not a valid CloudEvents type, the data does not match its EventType's schema (`attribute` `data`, `pointer`), or the namespace name is invalid.", body = ErrorBody),
        (status = 413, description = "The body, or the test event, exceeds `--max-event-bytes`.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
async fn test_event(
    State(state): State<IngestState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, SEND_TEST).await?;
    let body = read_body(body, state.config.max_event_bytes).await?;
    let id = format!("test-{}", jiff::Timestamp::now().as_nanosecond());
    let event = if body.iter().all(u8::is_ascii_whitespace) {
        crate::delivery::ping(id.clone(), &ns, &name)
    } else {
        let ct = content_type(&headers);
        if !ct.is_empty() && ct != "application/json" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {ct:?}: a test body is application/json"),
            ));
        }
        let test: TestBody = serde_json::from_slice(&body).map_err(|e| ApiError {
            attribute: Some("body".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("body: expected {{\"type\": string, \"data\": any JSON}} ({e})"),
            )
        })?;
        let type_ = test.type_.unwrap_or_else(|| crate::delivery::TEST_EVENT_TYPE.to_string());
        let data = test.data.unwrap_or(serde_json::Value::Null);
        let mut event = CloudEvent::from_hookline(id.clone(), &type_, &ns, &name, &data);
        if data.is_null() {
            event.data = None;
            event.datacontenttype = None;
        }
        event.check().map_err(ApiError::bad_event)?;
        state.catalog.check(&ns, &event).map_err(|r| ApiError::bad_data(r, None))?;
        if event.to_json_bytes().len() > state.config.max_event_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the test event exceeds the per-event limit of {} bytes",
                    state.config.max_event_bytes
                ),
            ));
        }
        event
    };
    let uid = subscription_uid(&state, &ns, &name).await?;
    let routed = state
        .dispatchers
        .send_test(&ns, &uid, &event)
        .await
        .map_err(|e| ApiError::unavailable(format!("storing the test event: {}", Chain(&e))))?;
    Ok((StatusCode::ACCEPTED, axum::Json(TestSent { id, matched: routed })).into_response())
}

/// The answer to an opened validation URL.
#[derive(Serialize, ToSchema)]
pub struct Verified {
    /// Always `true`: the endpoint is verified.
    pub verified: bool,
}

/// The validation URL of the `Event` handshake: whoever controls the endpoint opens it (GET)
/// within 10 minutes to prove ownership asynchronously. The token is the secret; it works once.
#[utoipa::path(
    get,
    path = "/v1/validate/{token}",
    tag = "webhooksubscriptions",
    operation_id = "validateEndpoint",
    params(("token" = String, Path, description = "The token of the `validationUrl` the endpoint was sent.")),
    responses(
        (status = 200, description = "The endpoint is verified; the subscription's `EndpointVerified` turns `True`.", body = Verified),
        (status = 404, description = "An unknown, used or expired validation URL.", body = ErrorBody),
        (status = 503, description = "The store cannot answer now; retry.", body = ErrorBody),
    ),
)]
async fn validate(State(state): State<IngestState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let store = &state.store;
    match store.confirm_validation(&token, crate::store::now_ms()).await {
        Ok(Some(_)) => Ok(axum::Json(Verified { verified: true }).into_response()),
        Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown, used or expired validation URL")),
        Err(e) => Err(ApiError::unavailable(format!("checking the validation URL: {}", Chain(&e)))),
    }
}
