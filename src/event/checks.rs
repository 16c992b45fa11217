//! The rules a published event must keep, with errors that name the attribute at fault.

use super::{CloudEvent, EventError, ExtValue, err, limits};

pub(super) const CONTEXT_ATTRIBUTES: &[&str] =
    &["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"];

/// Whether a media type carries JSON (`application/json`, `text/json`, `*+json`).
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

pub(super) fn is_text_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.starts_with("text/") || essence == "application/xml" || essence.ends_with("+xml")
}

/// `at` + `attribute` names the attribute in errors (built only for an error: this runs per event).
pub(super) fn check_required(at: &str, attribute: &str, value: Option<String>) -> Result<String, EventError> {
    match value {
        None => Err(err(format!("{at}{attribute}"), "is required")),
        Some(v) if v.is_empty() => Err(err(format!("{at}{attribute}"), "must not be empty")),
        Some(v) => Ok(v),
    }
}

pub(super) fn check_extension_name(name: &str, attribute: &str) -> Result<(), EventError> {
    if name.is_empty()
        || name.len() > 20
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(err(attribute, "extension attribute names must be 1-20 lowercase letters or digits"));
    }
    if name == "data" || name == "data_base64" {
        return Err(err(attribute, "is a reserved name"));
    }
    Ok(())
}

/// Every attribute within [`limits`] and free of control characters (CloudEvents forbids them in
/// strings, and a header could not carry them); `name` turns an attribute into the name the
/// publisher used.
pub(super) fn check_attribute_values(
    event: &CloudEvent,
    name: impl Fn(&str) -> String,
) -> Result<(), EventError> {
    fn optional(value: &Option<String>) -> &str {
        value.as_deref().unwrap_or_default()
    }
    for (attribute, value, max) in [
        ("id", event.id.as_str(), limits::ID),
        ("source", &event.source, limits::URI),
        ("type", &event.type_, limits::TYPE),
        ("subject", optional(&event.subject), limits::URI),
        ("time", optional(&event.time), limits::TIME),
        ("datacontenttype", optional(&event.datacontenttype), limits::MEDIA_TYPE),
        ("dataschema", optional(&event.dataschema), limits::URI),
    ] {
        check_value(value.len(), value, max).map_err(|problem| err(name(attribute), problem))?;
    }
    if event.extensions.len() > limits::EXTENSIONS {
        return Err(err(
            name("extensions"),
            format!("at most {} extension attributes are allowed", limits::EXTENSIONS),
        ));
    }
    for (key, value) in &event.extensions {
        let text = match value {
            ExtValue::String(s) => s.as_str(),
            _ => "",
        };
        check_value(value.header_len(), text, limits::URI).map_err(|problem| err(name(key), problem))?;
    }
    Ok(())
}

fn check_value(len: usize, text: &str, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!("must be at most {max} bytes"))
    } else if text.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(())
    }
}

pub(super) fn check_time(time: &Option<String>, at: &str, attribute: &str) -> Result<(), EventError> {
    if let Some(t) = time
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(err(format!("{at}{attribute}"), format!("{t:?} is not an RFC 3339 timestamp")));
    }
    Ok(())
}
