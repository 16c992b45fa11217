//! Pure pieces of dead-lettering: FailedEvent names and labels, and the CloudEvent ↔ record
//! conversions.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::CloudEventRecord;
use crate::event::{CloudEvent, EventError, ExtValue};

/// The FailedEvent name for one event of one subscription: stable, so creating it twice (after a
/// crash) finds the first one instead of making a duplicate.
pub fn failed_event_name(subscription: &str, sub_uid: &str, source: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{sub_uid}\n{source}\n{id}").as_bytes());
    let hash = hex::encode(&digest[..6]);
    let prefix: String = subscription.chars().take(200).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

/// A value usable as a label value (≤ 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both
/// ends); characters outside that set become `_`.
pub fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let cut: String = cleaned.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The event as a FailedEvent records it.
pub fn to_record(event: &CloudEvent) -> CloudEventRecord {
    let json = event.to_json();
    CloudEventRecord {
        specversion: "1.0".into(),
        id: event.id.clone(),
        source: event.source.clone(),
        type_: event.type_.clone(),
        subject: event.subject.clone(),
        time: event.time.clone(),
        datacontenttype: event.datacontenttype.clone(),
        dataschema: event.dataschema.clone(),
        data: json.get("data").cloned(),
        data_base64: json.get("data_base64").and_then(|v| v.as_str()).map(str::to_string),
        extensions: event
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.as_header()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The event a FailedEvent holds, for a replay.
pub fn from_record(record: &CloudEventRecord) -> Result<CloudEvent, EventError> {
    let mut json = serde_json::to_value(record).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        obj.remove("extensions");
        for (k, v) in &record.extensions {
            obj.insert(k.clone(), v.clone().into());
        }
    }
    let mut event = CloudEvent::from_json_value(json, "spec.event.")?;
    // Extensions were stored as strings; they go back on the wire as strings.
    event.extensions =
        record.extensions.iter().map(|(k, v)| (k.clone(), ExtValue::String(v.clone()))).collect();
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_valid_and_distinct() {
        let a = failed_event_name("orders", "uid-1", "/shop", "e1");
        assert_eq!(a, failed_event_name("orders", "uid-1", "/shop", "e1"));
        assert_ne!(a, failed_event_name("orders", "uid-1", "/shop", "e2"));
        assert_ne!(
            a,
            failed_event_name("orders", "uid-2", "/shop", "e1"),
            "a re-created subscription is another owner"
        );
        assert!(a.starts_with("orders-") && a.len() == "orders-".len() + 12);
        let long = failed_event_name(&"x".repeat(253), "u", "s", "i");
        assert!(long.len() <= 253);
    }

    #[test]
    fn label_values_are_sanitized() {
        assert_eq!(label_value("order.created"), "order.created");
        assert_eq!(label_value("com.example/order created"), "com.example_order_created");
        assert_eq!(label_value("-x-"), "x");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn records_round_trip_json_text_and_binary_payloads() {
        for body in [
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,2]},"traceparent":"00-x"}"#,
            r#"{"specversion":"1.0","id":"2","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
            r#"{"specversion":"1.0","id":"3","source":"/s","type":"t","datacontenttype":"image/png","data_base64":"iVBORw=="}"#,
        ] {
            let event = CloudEvent::from_structured(body.as_bytes()).expect("valid");
            let back = from_record(&to_record(&event)).expect("round trip");
            assert_eq!(back, event, "{body}");
        }
    }

    #[test]
    fn json_data_is_kept_as_json_for_kubectl() {
        let event = CloudEvent::from_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":1}}"#,
        )
        .expect("valid");
        assert_eq!(to_record(&event).data, Some(serde_json::json!({"n": 1})));
    }
}
