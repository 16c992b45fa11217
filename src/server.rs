//! The operations HTTP server (`/healthz`, `/readyz` and `/metrics` on `--metrics-addr`), and the
//! binding every HTTP server of Hookline shares.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::Readiness;

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// Bind `app` to `addr`; returns the bound address (the port, when `addr` asked for any) and a
/// future that serves until `shutdown`, then lets open requests finish.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve =
        async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await };
    Ok((local, serve))
}

/// `app`, answering with `Connection: close` once `draining` is cancelled: a client's keep-alive
/// connection ends after its current request, so its next one goes through the Service to
/// another pod instead of failing on a connection this one is about to close.
pub fn close_connections_when(app: Router, draining: CancellationToken) -> Router {
    app.layer(axum::middleware::map_response(move |mut response: axum::response::Response| {
        let draining = draining.is_cancelled();
        async move {
            if draining {
                response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            response
        }
    }))
}

/// Bind the operations server; returns the bound address and a future that serves until cancelled.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { metrics, readiness });
    serve(addr, app, shutdown).await
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    match state.readiness.probe() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(what) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}")),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    state.metrics.set_process_ready(state.readiness.probe().is_none());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn answers_close_their_connection_once_draining() {
        let draining = CancellationToken::new();
        let app = close_connections_when(Router::new().route("/", get(|| async { "ok" })), draining.clone());
        let ask = || app.clone().oneshot(Request::get("/").body(Body::empty()).expect("request"));
        let before = ask().await.expect("answer");
        assert_eq!(before.headers().get(header::CONNECTION), None, "keep-alive while serving");
        draining.cancel();
        let after = ask().await.expect("answer");
        assert_eq!(after.status(), StatusCode::OK, "still served while draining");
        assert_eq!(after.headers().get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"close"[..]));
    }
}
