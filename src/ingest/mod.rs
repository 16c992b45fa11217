//! The ingest and API server on `--ingest-addr`: publishing CloudEvents ([`publish`]), the
//! delivery log ([`log`]), test events ([`test_event`]) and the handshake's validation URL
//! ([`validate`]). This module holds what every route shares: the state, admission (ready, a
//! valid namespace, an allowed caller, an existing namespace) and the one list of routes. Every
//! answer is JSON; every refusal ([`error`]) names the problem.

pub mod auth;
pub mod error;
mod log;
pub mod openapi;
mod publish;
mod test_event;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody, to_bytes};
use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::delivery::Dispatchers;
use crate::metrics::{ConnectionCounters, Metrics};
use crate::registry::{Readiness, Registry};
use crate::report::Chain;
use crate::server::ConnectionLimits;
use crate::store::Store;
use auth::{Action, Auth};
pub use error::{ApiError, ErrorBody};

/// Settings of the ingest server.
#[derive(Clone)]
pub struct IngestConfig {
    /// Largest accepted event (a single-event body, or one event of a batch).
    pub max_event_bytes: usize,
    /// Below this many bytes free for the store, publishing is refused with 507, keeping the
    /// room the store needs to record deliveries and free space (`--min-free-disk`).
    pub min_free_disk: u64,
    /// Connections held by the server, and how long a request may take to arrive.
    pub limits: ConnectionLimits,
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
    /// The server's connection counters (request bodies that came too slowly).
    connections: ConnectionCounters,
}

impl std::ops::Deref for IngestState {
    type Target = Ingest;

    fn deref(&self) -> &Ingest {
        &self.parts
    }
}

/// How long a namespace known to exist is not looked up again.
const NAMESPACE_TTL: Duration = Duration::from_secs(30);

/// The routes of the API, each with its OpenAPI description: the router and the document come
/// from this one list.
fn routes() -> OpenApiRouter<IngestState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(publish::publish))
        .routes(routes!(log::namespace_deliveries))
        .routes(routes!(log::deliveries))
        .routes(routes!(log::cluster_deliveries))
        .routes(routes!(test_event::test_event))
        .routes(routes!(validate::validate))
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
    let connections = ingest.metrics.connections("ingest");
    let limits = ingest.config.limits;
    let state =
        IngestState { parts: Arc::new(ingest), namespaces: Arc::default(), connections: connections.clone() };
    let (router, _) = routes().split_for_parts();
    let app = crate::server::close_connections_when(router.with_state(state), draining);
    crate::server::serve(addr, app, limits, connections, shutdown).await
}

fn valid_namespace(ns: &str) -> Result<(), ApiError> {
    if is_dns_label(ns) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{ns:?} is not a valid namespace name")))
    }
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
        self.ready()?;
        valid_namespace(ns)?;
        self.auth.authorize(headers, ns, action).await?;
        self.namespace_exists(ns).await
    }

    /// The checks a cluster-wide request passes: ready, and a caller allowed `action` in all
    /// namespaces.
    async fn admit_cluster_wide(&self, headers: &HeaderMap, action: Action) -> Result<(), ApiError> {
        self.ready()?;
        self.auth.authorize(headers, "", action).await
    }

    fn ready(&self) -> Result<(), ApiError> {
        match self.readiness.missing() {
            None => Ok(()),
            Some(what) => Err(ApiError::unavailable(format!(
                "Hookline is not ready ({what}); nothing was accepted, retry later"
            ))),
        }
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

impl IngestState {
    /// A request's body, at most `limit` bytes, arriving within `--read-timeout`. A body whose
    /// `Content-Length` announces more is refused before any of it is read. Either refusal
    /// leaves the rest unread, which closes the connection.
    async fn read_body(&self, body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds the limit of {limit} bytes"),
            )
        };
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large());
        }
        let timeout = self.config.limits.read_timeout;
        match tokio::time::timeout(timeout, to_bytes(body, limit)).await {
            Ok(read) => read.map_err(|_| too_large()),
            Err(_) => {
                self.connections.body_timed_out();
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} (--read-timeout); nothing was accepted",
                        humantime::format_duration(timeout)
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_is_its_media_type_in_lower_case() {
        let with = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, v.parse().expect("header value"));
            content_type(&headers)
        };
        assert_eq!(with("application/cloudevents+json"), "application/cloudevents+json");
        assert_eq!(
            with("Application/CloudEvents-Batch+JSON; charset=utf-8"),
            "application/cloudevents-batch+json"
        );
        assert_eq!(with(" text/plain ;q=1"), "text/plain");
        assert_eq!(content_type(&HeaderMap::new()), "");
    }

    #[test]
    fn namespaces_are_dns_labels() {
        for ok in ["a", "team-a", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Team", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
