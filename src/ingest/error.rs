//! Refusals: an HTTP status and a JSON body naming the problem, the same shape on every route.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::catalog::DataRefusal;
use crate::event::EventError;

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
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
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
    pub(super) fn insufficient_storage(m: impl Into<String>) -> Self {
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
    pub(super) fn bad_event(e: EventError) -> Self {
        Self { attribute: Some(e.attribute.clone()), ..Self::new(StatusCode::BAD_REQUEST, e.to_string()) }
    }
    /// 400: the event's data does not match its EventType's schema; `index` in a batch.
    pub(super) fn bad_data(refusal: DataRefusal, index: Option<usize>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn a_refusal_names_the_problem_and_only_what_applies() {
        let response = ApiError::forbidden("no").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(body(response).await, serde_json::json!({"error": "no"}));
    }

    #[tokio::test]
    async fn a_full_store_says_when_to_retry() {
        let response = ApiError::insufficient_storage("full").into_response();
        assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(response.headers()[header::RETRY_AFTER], FULL_RETRY_AFTER_SECS.to_string().as_str());
    }

    #[tokio::test]
    async fn bad_data_in_a_batch_names_the_event_and_the_pointer() {
        let refusal = || DataRefusal { pointer: "/amount".into(), message: "amount: too small".into() };
        let single = ApiError::bad_data(refusal(), None);
        assert_eq!((single.attribute.as_deref(), single.index), (Some("data"), None));
        let response = ApiError::bad_data(refusal(), Some(3)).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(response).await,
            serde_json::json!({
                "error": "batch[3]: amount: too small",
                "attribute": "batch[3].data",
                "index": 3,
                "pointer": "/amount",
            })
        );
    }
}
