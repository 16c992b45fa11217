//! The two handshakes on the wire.

use std::time::Duration;

use http::{HeaderValue, Method};
use kube::ResourceExt;
use rand::RngCore;
use serde_json::json;

use super::plan::retry_delay;
use super::{CODE_TTL, VALIDATION_EVENT_TYPE, Verifier};
use crate::api::{ValidationMethod, WebhookSubscription};
use crate::event::CloudEvent;
use crate::outbound::http::{describe, read_capped};
use crate::outbound::webhook::render;
use crate::report::Chain;
use crate::store::{Millis, Verification};
use crate::telemetry;

/// How long one handshake request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Run one handshake attempt and return the updated record.
pub(super) async fn attempt(
    verifier: &Verifier,
    sub: &WebhookSubscription,
    mut v: Verification,
    signing_secret: Option<&str>,
    now: Millis,
) -> Verification {
    v.attempts += 1;
    v.next_attempt_at = now + retry_delay(v.attempts).as_millis() as Millis;
    match sub.spec.validation.method {
        ValidationMethod::Options => options(verifier, sub, &mut v, now).await,
        _ => event(verifier, sub, &mut v, signing_secret, now).await,
    }
    v
}

async fn event(
    verifier: &Verifier,
    sub: &WebhookSubscription,
    v: &mut Verification,
    secret: Option<&str>,
    now: Millis,
) {
    // A code stays valid for its whole life, so an endpoint that answers asynchronously is not
    // raced by the retries.
    if v.expires_at.is_none_or(|t| t <= now) || v.code.is_none() {
        v.code = Some(random_hex(16));
        v.token = Some(random_hex(24));
        v.expires_at = Some(now + CODE_TTL.as_millis() as Millis);
        // The validation URL works from the moment the event is sent: an endpoint may open it
        // before it answers. (The record written after the attempt never undoes a confirmation.)
        if let Err(e) = verifier.store.put_verification(v.clone()).await {
            tracing::warn!(subscription = %sub.name_any(), error = %Chain(&e), "saving the validation code");
        }
    }
    let code = v.code.clone().unwrap_or_default();
    let validation_url = verifier.public_url.as_ref().map(|base| {
        format!("{}/v1/validate/{}", base.trim_end_matches('/'), v.token.clone().unwrap_or_default())
    });
    let mut data = json!({"validationCode": code});
    if let Some(u) = &validation_url {
        data["validationUrl"] = u.clone().into();
    }
    let id = format!("validation-{}", random_hex(8));
    let namespace = sub.namespace().unwrap_or_default();
    let event = CloudEvent::from_hookline(id, VALIDATION_EVENT_TYPE, &namespace, &sub.name_any(), &data);
    let keys = match secret {
        Some(name) => verifier
            .secrets
            .signing_keys(&sub.namespace().unwrap_or_default(), name)
            .await
            .unwrap_or_default(),
        None => vec![],
    };
    let (mut headers, body) =
        render(&event, sub.spec.delivery.mode, &keys, jiff::Timestamp::now().as_second());
    let url = &sub.spec.endpoint.url;
    let Some(http) = client(verifier, sub, v).await else { return };
    let span = telemetry::handshake(&namespace, &sub.name_any(), "event");
    headers.extend(span.headers.iter().cloned().map(|(k, v)| (Some(k), v)));
    let request = http.post(url).headers(headers).body(body).timeout(TIMEOUT);
    let async_hint = match &validation_url {
        Some(_) => " or GET the validationUrl from the event within 10 minutes",
        None => "",
    };
    let sent = request.send().await;
    span.end(sent.as_ref().ok().map(|r| r.status().as_u16()), sent.as_ref().err().map(describe).as_deref());
    v.message = match sent {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let answer = read_capped(&mut resp, TIMEOUT).await;
            let echoed = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|j| j.get("validationResponse").and_then(|c| c.as_str()).map(str::to_string));
            if status == 200 && echoed.as_deref() == Some(code.as_str()) {
                v.verified_at = Some(now);
                v.code = None;
                v.token = None;
                v.expires_at = None;
                "verified: the endpoint echoed the validation code".into()
            } else {
                let why = match (status, echoed) {
                    (200, Some(_)) => "answered 200 with the wrong validationResponse".to_string(),
                    (200, None) => "answered 200 without a validationResponse".to_string(),
                    (s, _) => format!("answered HTTP {s}"),
                };
                format!(
                    "Hookline POSTed a {VALIDATION_EVENT_TYPE} event to {url}; it {why}. The endpoint must answer 200 \
                     with {{\"validationResponse\": \"<validationCode>\"}}{async_hint}."
                )
            }
        }
        Err(e) => format!(
            "Hookline could not POST the {VALIDATION_EVENT_TYPE} event to {url} ({}); the endpoint must answer it with \
             {{\"validationResponse\": \"<validationCode>\"}}{async_hint}.",
            describe(&e)
        ),
    };
}

/// The endpoint's HTTP client; `None` (with the reason in `v.message`) when its CA bundle is unusable.
async fn client(
    verifier: &Verifier,
    sub: &WebhookSubscription,
    v: &mut Verification,
) -> Option<reqwest::Client> {
    match verifier.clients.for_endpoint(&sub.namespace().unwrap_or_default(), &sub.spec.endpoint).await {
        Ok(client) => Some(client),
        Err(e) => {
            v.message = format!("Hookline cannot call {}: {}", sub.spec.endpoint.url, Chain(&e));
            None
        }
    }
}

async fn options(verifier: &Verifier, sub: &WebhookSubscription, v: &mut Verification, now: Millis) {
    let url = &sub.spec.endpoint.url;
    let origin = verifier
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "hookline".into());
    let Some(http) = client(verifier, sub, v).await else { return };
    let span = telemetry::handshake(&sub.namespace().unwrap_or_default(), &sub.name_any(), "options");
    let mut request = http
        .request(Method::OPTIONS, url)
        .header("WebHook-Request-Origin", origin.clone())
        .header("WebHook-Request-Rate", "120")
        .timeout(TIMEOUT);
    for (name, value) in &span.headers {
        request = request.header(name, value);
    }
    v.code = None;
    v.token = None;
    let sent = request.send().await;
    span.end(sent.as_ref().ok().map(|r| r.status().as_u16()), sent.as_ref().err().map(describe).as_deref());
    v.message = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers().get(name).and_then(|h: &HeaderValue| h.to_str().ok()).map(str::to_string)
            };
            let allowed = header("WebHook-Allowed-Origin");
            let rate = header("WebHook-Allowed-Rate");
            if (200..300).contains(&status) && allowed.as_deref().is_some_and(|a| a == "*" || a == origin) {
                v.verified_at = Some(now);
                v.rate_per_minute = rate.and_then(|r| r.trim().parse::<u32>().ok()).filter(|r| *r > 0);
                "verified: the endpoint allowed this origin in the OPTIONS handshake".into()
            } else {
                format!(
                    "Hookline sent OPTIONS to {url} with WebHook-Request-Origin: {origin}; it answered HTTP {status} \
                     with WebHook-Allowed-Origin: {}. The endpoint must answer 200 with WebHook-Allowed-Origin: {origin} (or *).",
                    allowed.unwrap_or_else(|| "(none)".into())
                )
            }
        }
        Err(e) => format!("Hookline could not send the OPTIONS handshake to {url} ({}).", describe(&e)),
    };
}
