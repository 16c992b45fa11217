//! A webhook request on the wire: the CloudEvent in binary or structured mode, with the Standard
//! Webhooks `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::signing::{SigningKey, signature_header};
use crate::api::DeliveryMode;
use crate::event::{CloudEvent, STRUCTURED, percent_encode};

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
