//! `POST …/webhooksubscriptions/{name}/test`: a test event for one subscription, the ping or a
//! chosen type and data checked like a publish.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::SEND_TEST;
use super::error::{ApiError, ErrorBody};
use super::log::subscription_uid;
use super::{IngestState, content_type, openapi};
use crate::event::CloudEvent;
use crate::report::Chain;

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
        (status = 408, description = "The body did not arrive within `--read-timeout`; nothing was sent and the connection is closed.", body = ErrorBody),
        (status = 413, description = "The body, or the test event, exceeds `--max-event-bytes`.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
pub(super) async fn test_event(
    State(state): State<IngestState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, SEND_TEST).await?;
    let body = state.read_body(body, state.config.max_event_bytes).await?;
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
