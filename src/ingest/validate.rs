//! `GET /v1/validate/{token}`: the validation URL of the `Event` handshake.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::IngestState;
use super::error::{ApiError, ErrorBody};
use crate::report::Chain;

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
pub(super) async fn validate(
    State(state): State<IngestState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let store = &state.store;
    match store.confirm_validation(&token, crate::store::now_ms()).await {
        Ok(Some(_)) => Ok(axum::Json(Verified { verified: true }).into_response()),
        Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown, used or expired validation URL")),
        Err(e) => Err(ApiError::unavailable(format!("checking the validation URL: {}", Chain(&e)))),
    }
}
