//! CloudEvents 1.0: the event model, its JSON format, and its HTTP bindings (binary, structured,
//! batch) for both parsing published events and rendering deliveries.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

mod checks;
pub mod limits;

pub use checks::is_json_media_type;
use checks::{
    CONTEXT_ATTRIBUTES, check_attribute_values, check_extension_name, check_required, check_time,
    is_text_media_type,
};

/// Media type of a structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch of events.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// The `source` of the events Hookline itself sends (test and validation events).
pub const HOOKLINE_SOURCE: &str = "/hookline";

/// The extension attribute of the CloudEvents Partitioning extension.
pub const PARTITION_KEY: &str = "partitionkey";

/// An extension attribute value (CloudEvents types String, Integer, Boolean), written as the
/// JSON value itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = ExtensionValue)]
pub enum ExtValue {
    /// A string (at most 2,048 bytes).
    String(String),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Boolean(bool),
}

impl ExtValue {
    /// The canonical string form, used in binary-mode headers.
    pub fn as_header(&self) -> String {
        match self {
            ExtValue::String(s) => s.clone(),
            ExtValue::Integer(i) => i.to_string(),
            ExtValue::Boolean(b) => b.to_string(),
        }
    }

    /// The length of [`ExtValue::as_header`], without building it for a string.
    pub fn header_len(&self) -> usize {
        match self {
            ExtValue::String(s) => s.len(),
            other => other.as_header().len(),
        }
    }
}

/// The CloudEvents JSON format, borrowed from a [`CloudEvent`] (see `json_format`).
#[derive(Serialize)]
struct JsonFormat<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<&'a str>,
    #[serde(flatten)]
    extensions: &'a BTreeMap<String, ExtValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(rename = "data", skip_serializing_if = "Option::is_none")]
    data_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// A validated CloudEvent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    /// Identifies the event; unique per `source`.
    pub id: String,
    /// The context in which the event happened (a URI reference).
    pub source: String,
    /// The event type, e.g. `order.created`.
    pub type_: String,
    /// The subject of the event in the context of the source.
    pub subject: Option<String>,
    /// When the event happened (RFC 3339).
    pub time: Option<String>,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// The schema `data` adheres to (a URI).
    pub dataschema: Option<String>,
    /// Extension attributes by name.
    pub extensions: BTreeMap<String, ExtValue>,
    /// The payload bytes exactly as published.
    pub data: Option<Bytes>,
}

/// Why a published event was refused; names the attribute and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {problem}")]
pub struct EventError {
    /// The attribute (or `body`, `batch[3].id`, …) at fault.
    pub attribute: String,
    /// The rule it broke.
    pub problem: String,
}

fn err(attribute: impl Into<String>, problem: impl Into<String>) -> EventError {
    EventError { attribute: attribute.into(), problem: problem.into() }
}

impl CloudEvent {
    /// An event Hookline itself sends about the subscription `namespace/name`: sent now, with
    /// JSON `data`.
    pub fn from_hookline(id: String, type_: &str, namespace: &str, name: &str, data: &Value) -> Self {
        CloudEvent {
            id,
            source: HOOKLINE_SOURCE.to_string(),
            type_: type_.to_string(),
            subject: Some(format!("webhooksubscriptions/{namespace}/{name}")),
            time: Some(jiff::Timestamp::now().to_string()),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            extensions: BTreeMap::new(),
            data: Some(Bytes::from(data.to_string())),
        }
    }

    /// Parse a binary-mode request: attributes in `ce-*` headers, the body is the data.
    pub fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, EventError> {
        let header = |name: &str| -> Result<Option<String>, EventError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(percent_decode(s)))
                    .map_err(|_| err(name, "header value is not valid text")),
            }
        };
        let specversion = check_required("", "ce-specversion", header("ce-specversion")?)?;
        if specversion != "1.0" {
            return Err(err("ce-specversion", format!("must be 1.0, got {specversion:?}")));
        }
        let mut extensions = BTreeMap::new();
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix("ce-") else { continue };
            if CONTEXT_ATTRIBUTES.contains(&attr) {
                continue;
            }
            check_extension_name(attr, name.as_str())?;
            let value = value.to_str().map_err(|_| err(name.as_str(), "header value is not valid text"))?;
            extensions.insert(attr.to_string(), ExtValue::String(percent_decode(value)));
        }
        let event = CloudEvent {
            id: check_required("", "ce-id", header("ce-id")?)?,
            source: check_required("", "ce-source", header("ce-source")?)?,
            type_: check_required("", "ce-type", header("ce-type")?)?,
            subject: header("ce-subject")?,
            time: header("ce-time")?,
            datacontenttype: header("content-type")?,
            dataschema: header("ce-dataschema")?,
            extensions,
            data: (!body.is_empty()).then_some(body),
        };
        check_time(&event.time, "", "ce-time")?;
        check_attribute_values(&event, |a| {
            if a == "datacontenttype" { "content-type".into() } else { format!("ce-{a}") }
        })?;
        Ok(event)
    }

    /// Parse one event in the CloudEvents JSON format; `at` prefixes attribute names in errors.
    pub fn from_json_value(value: Value, at: &str) -> Result<CloudEvent, EventError> {
        // Serializing a Value cannot fail, and its text is valid JSON.
        let text = serde_json::to_string(&value).unwrap_or_default();
        let raw: &RawValue =
            serde_json::from_str(&text).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
        CloudEvent::from_raw(raw, at)
    }

    /// Parse one event from its JSON text without building a tree of it: attributes are read
    /// from the borrowed text, and JSON data is kept as the bytes that were published.
    fn from_raw(raw: &RawValue, at: &str) -> Result<CloudEvent, EventError> {
        let name = |a: &str| format!("{at}{a}");
        let not_object = || {
            err(
                if at.is_empty() { "body".into() } else { at.trim_end_matches('.').to_string() },
                "must be a JSON object",
            )
        };
        if !raw.get().starts_with('{') {
            return Err(not_object());
        }
        // Sorted, so that of several bad extensions the same one is always named.
        let mut obj: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| not_object())?;
        let mut take = |a: &str| obj.remove(a).filter(|v| v.get() != "null");
        let mut take_string = |a: &str| -> Result<Option<String>, EventError> {
            match take(a) {
                None => Ok(None),
                Some(v) => serde_json::from_str::<String>(v.get())
                    .map(Some)
                    .map_err(|_| err(name(a), "must be a string")),
            }
        };
        let specversion = check_required(at, "specversion", take_string("specversion")?)?;
        if specversion != "1.0" {
            return Err(err(name("specversion"), format!("must be 1.0, got {specversion:?}")));
        }
        let id = check_required(at, "id", take_string("id")?)?;
        let source = check_required(at, "source", take_string("source")?)?;
        let type_ = check_required(at, "type", take_string("type")?)?;
        let subject = take_string("subject")?;
        let time = take_string("time")?;
        let datacontenttype = take_string("datacontenttype")?;
        let dataschema = take_string("dataschema")?;
        check_time(&time, at, "time")?;
        let data_base64 = take_string("data_base64")?;
        let data = obj.remove("data").filter(|v| v.get() != "null");
        let data = match (data, data_base64) {
            (Some(_), Some(_)) => {
                return Err(err(name("data"), "data and data_base64 are mutually exclusive"));
            }
            (None, Some(b64)) => Some(Bytes::from(
                STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| err(name("data_base64"), "is not valid base64"))?,
            )),
            (None, None) => None,
            // A string is the payload itself unless the payload is declared to be JSON.
            (Some(v), None)
                if v.get().starts_with('"') && !datacontenttype.as_deref().is_none_or(is_json_media_type) =>
            {
                Some(Bytes::from(
                    serde_json::from_str::<String>(v.get()).map_err(|e| err(name("data"), e.to_string()))?,
                ))
            }
            (Some(v), None) => Some(Bytes::copy_from_slice(v.get().as_bytes())),
        };
        let mut extensions = BTreeMap::new();
        for (key, raw) in obj {
            check_extension_name(&key, &name(&key))?;
            let value = match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(s)) => ExtValue::String(s),
                Ok(Value::Bool(b)) => ExtValue::Boolean(b),
                Ok(Value::Number(n)) => ExtValue::Integer(
                    n.as_i64().ok_or_else(|| err(name(&key), "extension numbers must be integers"))?,
                ),
                _ => return Err(err(name(&key), "extension values must be strings, integers or booleans")),
            };
            extensions.insert(key, value);
        }
        let event =
            CloudEvent { id, source, type_, subject, time, datacontenttype, dataschema, extensions, data };
        check_attribute_values(&event, name)?;
        Ok(event)
    }

    /// Check an event built here rather than parsed (a test event with a chosen type) against
    /// the rules every published event keeps.
    pub fn check(&self) -> Result<(), EventError> {
        if self.type_.is_empty() {
            return Err(err("type", "must not be empty"));
        }
        checks::check_attribute_values(self, str::to_string)
    }

    /// Parse a structured-mode body.
    pub fn from_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
        CloudEvent::from_raw(raw, "")
    }

    /// Parse a batch body; one bad entry rejects the whole batch.
    pub fn from_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
        if !raw.get().starts_with('[') {
            return Err(err("body", "a batch must be a JSON array"));
        }
        let items: Vec<&RawValue> =
            serde_json::from_str(raw.get()).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
        if items.is_empty() {
            return Err(err("body", "a batch must hold at least one event"));
        }
        items.into_iter().enumerate().map(|(i, v)| CloudEvent::from_raw(v, &format!("batch[{i}]."))).collect()
    }

    /// The CloudEvents Partitioning extension's `partitionkey` (in its string form), which
    /// ordered delivery keeps the events of one key in order by.
    pub fn partition_key(&self) -> Option<String> {
        self.extensions.get(PARTITION_KEY).map(ExtValue::as_header)
    }

    /// The event in the CloudEvents JSON format (structured mode, and how it is stored).
    pub fn to_json(&self) -> Value {
        // Serializing plain strings, integers and validated raw JSON cannot fail.
        serde_json::to_value(self.json_format()).unwrap_or_default()
    }

    /// [`CloudEvent::to_json`], serialized without building a [`Value`] tree.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json_format()).unwrap_or_default()
    }

    /// The JSON format borrowed from this event: JSON data is copied through as it is (not parsed
    /// and re-encoded), text data as a string, anything else as base64.
    fn json_format(&self) -> JsonFormat<'_> {
        let raw =
            self.data.as_ref().filter(|_| self.datacontenttype.as_deref().is_none_or(is_json_media_type));
        let data_raw = raw.and_then(|d| serde_json::from_slice::<&RawValue>(d).ok());
        let (data_text, data_base64) = match (&self.data, data_raw) {
            (Some(data), None) => match std::str::from_utf8(data) {
                Ok(text) if self.datacontenttype.as_deref().is_some_and(is_text_media_type) => {
                    (Some(text), None)
                }
                _ => (None, Some(STANDARD.encode(data))),
            },
            _ => (None, None),
        };
        JsonFormat {
            specversion: "1.0",
            id: &self.id,
            source: &self.source,
            type_: &self.type_,
            subject: self.subject.as_deref(),
            time: self.time.as_deref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            extensions: &self.extensions,
            data: data_raw,
            data_text,
            data_base64,
        }
    }

    /// Bytes the payload takes, for the size cap.
    pub fn size(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
            + self.id.len()
            + self.source.len()
            + self.type_.len()
            + self.extensions.iter().map(|(k, v)| k.len() + v.header_len()).sum::<usize>()
    }
}

/// What binary-mode header values percent-encode: controls, non-ASCII bytes, `"` and `%`.
const HEADER_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'"').add(b'%');

/// Binary-mode header values are percent-encoded for characters outside printable ASCII; a value
/// that does not decode to UTF-8 is kept as sent.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8().map_or_else(|_| s.to_string(), |d| d.into_owned())
}

/// Percent-encode a header value as the binary binding requires.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, HEADER_ESCAPES).to_string()
}

#[cfg(test)]
mod tests;
