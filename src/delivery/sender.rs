//! One HTTP delivery attempt: the signed webhook request with the endpoint's static headers,
//! under a per-attempt timeout, and the answer classified for the retry policy.

use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, header};
use reqwest::Client;

use crate::api::DeliveryMode;
use crate::event::CloudEvent;
use crate::outbound::http::{describe, read_capped};
use crate::outbound::signing::SigningKey;
use crate::outbound::webhook::render;
use crate::policy::retry::{Answer, parse_retry_after};

/// The parts of a request that do not depend on the event.
pub struct Target<'a> {
    /// The endpoint URL.
    pub url: &'a str,
    /// Binary or structured mode.
    pub mode: DeliveryMode,
    /// How long the request may take.
    pub timeout: Duration,
    /// Headers from the spec and its Secret.
    pub static_headers: &'a [(HeaderName, HeaderValue)],
    /// Keys to sign with (two during a rotation).
    pub keys: &'a [SigningKey],
}

/// The result of one attempt.
#[derive(Clone, Debug)]
pub struct Sent {
    /// What the endpoint answered.
    pub outcome: Answer,
    /// How long the request took.
    pub duration: Duration,
}

/// POST one event and classify the answer. Never fails: every problem is an [`Answer`].
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
            Answer::Status { code, retry_after }
        }
        Err(e) => Answer::NoAnswer(describe(&e)),
    };
    Sent { outcome, duration: start.elapsed() }
}
