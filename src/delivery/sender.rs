//! One HTTP delivery attempt: the CloudEvent on the wire (binary or structured), Standard
//! Webhooks headers, a per-attempt timeout, no redirects, and a bounded read of the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use reqwest::Client;

use super::signing::{SigningKey, signature_header};
use super::ssrf::{Guard, GuardedResolver};
use crate::api::DeliveryMode;
use crate::event::{CloudEvent, STRUCTURED, percent_encode};
use crate::policy::retry::{Outcome, parse_retry_after};

/// At most this much of a response body is read; the rest is discarded with the connection.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Errors building the shared HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client: {0}")]
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

/// The parts of a request that do not depend on the event.
pub struct Target<'a> {
    pub url: &'a str,
    pub mode: DeliveryMode,
    pub timeout: Duration,
    pub static_headers: &'a [(HeaderName, HeaderValue)],
    pub keys: &'a [SigningKey],
}

/// The result of one attempt.
#[derive(Clone, Debug)]
pub struct Sent {
    pub outcome: Outcome,
    pub duration: Duration,
}

/// Build the body and headers of a delivery.
pub fn render(
    event: &CloudEvent,
    mode: DeliveryMode,
    keys: &[SigningKey],
    timestamp: i64,
) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let body = match mode {
        DeliveryMode::Structured => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(STRUCTURED));
            Bytes::from(event.to_json_bytes())
        }
        DeliveryMode::Binary => {
            let mut put = |name: &str, value: &str| {
                if let (Ok(n), Ok(v)) =
                    (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&percent_encode(value)))
                {
                    headers.insert(n, v);
                }
            };
            put("ce-specversion", "1.0");
            put("ce-id", &event.id);
            put("ce-source", &event.source);
            put("ce-type", &event.type_);
            for (name, value) in [
                ("ce-subject", &event.subject),
                ("ce-time", &event.time),
                ("ce-dataschema", &event.dataschema),
            ] {
                if let Some(v) = value {
                    put(name, v);
                }
            }
            for (k, v) in &event.extensions {
                put(&format!("ce-{k}"), &v.as_header());
            }
            // In the JSON format an absent datacontenttype means JSON; say so on the wire.
            let json_default = event
                .data
                .as_ref()
                .is_some_and(|d| serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok());
            match &event.datacontenttype {
                Some(ct) => {
                    if let Ok(v) = HeaderValue::from_str(ct) {
                        headers.insert(header::CONTENT_TYPE, v);
                    }
                }
                None if json_default => {
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                None => {}
            }
            event.data.clone().unwrap_or_default()
        }
    };
    let msg_id = HeaderValue::from_str(&event.id).unwrap_or_else(|_| HeaderValue::from_static("invalid-id"));
    headers.insert("webhook-id", msg_id);
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    if let Ok(sig) = HeaderValue::from_str(&signature_header(keys, &event.id, timestamp, &body)) {
        headers.insert("webhook-signature", sig);
    }
    (headers, body)
}

/// POST one event and classify the answer. Never fails: every problem is an [`Outcome`].
pub async fn send(client: &Client, target: &Target<'_>, event: &CloudEvent) -> Sent {
    let start = Instant::now();
    let timestamp = jiff::Timestamp::now().as_second();
    let (mut headers, body) = render(event, target.mode, target.keys, timestamp);
    for (name, value) in target.static_headers {
        headers.insert(name.clone(), value.clone());
    }
    let request = client.post(target.url).headers(headers).body(body).timeout(target.timeout);
    let outcome = match request.send().await {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
            // Read a little so a small answer leaves the connection reusable; never more.
            read_capped(&mut resp, target.timeout).await;
            Outcome::Status { code, retry_after }
        }
        Err(e) => Outcome::Error(describe(&e)),
    };
    Sent { outcome, duration: start.elapsed() }
}

/// Read at most [`MAX_RESPONSE_BYTES`] of an answer, each chunk within `timeout`.
pub(crate) async fn read_capped(resp: &mut reqwest::Response, timeout: Duration) -> Vec<u8> {
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

/// A short, secret-free description of a transport error.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut source = e.source();
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    let kind = if e.is_connect() { "connection failed" } else { "request failed" };
    match last {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExtValue;

    fn event() -> CloudEvent {
        CloudEvent {
            id: "e-1".into(),
            source: "/shop".into(),
            type_: "order.created".into(),
            subject: Some("caf\u{e9}".into()),
            time: None,
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            extensions: [("traceparent".to_string(), ExtValue::String("00-1".into()))].into(),
            data: Some(Bytes::from_static(br#"{"total":3}"#)),
        }
    }

    fn key() -> SigningKey {
        SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=").expect("key")
    }

    #[test]
    fn binary_mode_puts_attributes_in_headers_and_data_in_the_body() {
        let (h, body) = render(&event(), DeliveryMode::Binary, &[key()], 1_700_000_000);
        assert_eq!(body, &br#"{"total":3}"#[..]);
        assert_eq!(h["ce-id"], "e-1");
        assert_eq!(h["ce-subject"], "caf%C3%A9");
        assert_eq!(h["ce-traceparent"], "00-1");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["webhook-id"], "e-1");
        assert_eq!(h["webhook-timestamp"], "1700000000");
        assert_eq!(h["webhook-signature"], key().sign("e-1", 1_700_000_000, &body).as_str());
    }

    #[test]
    fn structured_mode_sends_the_json_format_and_signs_it() {
        let (h, body) = render(&event(), DeliveryMode::Structured, &[key()], 1);
        assert_eq!(h["content-type"], STRUCTURED);
        assert!(h.get("ce-id").is_none());
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["data"]["total"], 3);
        assert_eq!(json["traceparent"], "00-1");
        assert_eq!(h["webhook-signature"], key().sign("e-1", 1, &body).as_str());
    }
}
