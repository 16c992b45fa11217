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
    match state.readiness.missing() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(what) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}")),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    state.metrics.set_process_ready(state.readiness.missing().is_none());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}
