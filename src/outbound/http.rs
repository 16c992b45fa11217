//! The HTTP client every outbound request uses: pooled, no redirects, resolving only through the
//! SSRF guard; and the bounded, secret-free handling of what comes back.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Client;

use super::ssrf::{Guard, GuardError, GuardedResolver};
use crate::report::Chain;

/// At most this much of a response body is read; the rest is discarded with the connection.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Errors building the shared HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client")]
pub struct ClientError(#[from] reqwest::Error);

/// The shared, pooled HTTP client: keep-alive, never follows redirects, resolves only through the
/// SSRF guard, verifies certificates against the system's trusted roots.
pub fn client(guard: Arc<Guard>) -> Result<Client, ClientError> {
    Ok(builder(guard).build()?)
}

/// A client like [`client`] that trusts only these CA certificates (an endpoint's private CA).
pub fn client_trusting(guard: Arc<Guard>, roots: Vec<reqwest::Certificate>) -> Result<Client, ClientError> {
    Ok(builder(guard).tls_certs_only(roots).build()?)
}

/// Idle connections kept per host. Many subscriptions often point at one receiver, each with up
/// to 64 requests in flight; a cap of one subscription's concurrency closed the surplus after every
/// burst, and the next requests connected again (13% of Hookline's time with ten subscriptions to
/// one host). Idle connections still close after 90 s.
const MAX_IDLE_PER_HOST: usize = 1024;

fn builder(guard: Arc<Guard>) -> reqwest::ClientBuilder {
    // reqwest is built without a default crypto provider; kube already uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(GuardedResolver(guard))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .user_agent(concat!("Hookline/", env!("CARGO_PKG_VERSION")))
}

/// Read at most [`MAX_RESPONSE_BYTES`] of an answer, each chunk within `timeout`.
pub async fn read_capped(resp: &mut reqwest::Response, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < MAX_RESPONSE_BYTES {
        match tokio::time::timeout(timeout, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(MAX_RESPONSE_BYTES);
    out
}

/// A short, secret-free description of a transport error: its kind and its deepest cause, or the
/// SSRF guard's refusal with its reason when that is what stopped it.
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut source = e.source();
    let mut last = None;
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<GuardError>() {
            last = Some(Chain(refused).to_string());
            break;
        }
        last = Some(s.to_string());
        source = s.source();
    }
    let kind = if e.is_connect() { "connection failed" } else { "request failed" };
    match last {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}
