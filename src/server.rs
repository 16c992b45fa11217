//! The operations HTTP server (`/healthz`, `/readyz` and `/metrics` on `--metrics-addr`), and the
//! serving every HTTP server of Hookline shares: its connections admitted within
//! [`ConnectionLimits`] (see [`connections`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::{ConnectionCounters, Metrics};
use crate::registry::Readiness;

pub mod connections;

pub use connections::ConnectionLimits;
use connections::{Admission, Refuser};

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The most a connection buffers: a request's headers must fit (hyper's default is ~400 KiB,
/// which a few thousand slow clients could make Hookline hold).
const MAX_BUFFER: usize = 64 * 1024;

/// Bind `app` to `addr`; returns the bound address (the port, when `addr` asked for any) and a
/// future that serves until `shutdown`, then lets open requests finish. Connections are admitted
/// within `limits` and counted in `counters`.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    counters: ConnectionCounters,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, accept(listener, app, limits, counters, shutdown)))
}

async fn accept(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    counters: ConnectionCounters,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let admission = Admission::new(limits);
    let refuser = Refuser::default();
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // hyper starts this timer whenever it waits for a request's head, also on a connection idle
    // between requests.
    http.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout).max_buf_size(MAX_BUFFER);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        let admitted = match admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                counters.refused(refusal.metric_label());
                debug!(client = %peer.ip(), %refusal, "connection refused");
                refuser.refuse(stream, refusal);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())));
        let counters = counters.clone();
        counters.opened();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    counters.header_timed_out();
                }
                debug!(client = %peer.ip(), error = %e, "connection ended");
            }
            counters.closed();
            drop(admitted);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// After a failed `accept`: a connection that failed before it was accepted is just skipped;
/// anything else (out of file descriptors, mostly) waits a moment, as the failure would repeat.
async fn accept_failed(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    warn!(error = %e, "accepting a connection failed; retrying in a second");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
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
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let counters = metrics.connections("operations");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { metrics, readiness });
    serve(addr, app, limits, counters, shutdown).await
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
