//! The rules a published event must keep, with errors that name the attribute at fault.

use super::{CloudEvent, EventError, err, limits};

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

/// Every attribute within [`limits`]; `name` turns an attribute into the name the publisher used.
pub(super) fn check_lengths(event: &CloudEvent, name: impl Fn(&str) -> String) -> Result<(), EventError> {
    let too_long = |attribute: &str, max: usize| err(name(attribute), format!("must be at most {max} bytes"));
    let optional = |value: &Option<String>| value.as_deref().map_or(0, str::len);
    for (attribute, len, max) in [
        ("id", event.id.len(), limits::ID),
        ("source", event.source.len(), limits::URI),
        ("type", event.type_.len(), limits::TYPE),
        ("subject", optional(&event.subject), limits::URI),
        ("time", optional(&event.time), limits::TIME),
        ("datacontenttype", optional(&event.datacontenttype), limits::MEDIA_TYPE),
        ("dataschema", optional(&event.dataschema), limits::URI),
    ] {
        if len > max {
            return Err(too_long(attribute, max));
        }
    }
    if event.extensions.len() > limits::EXTENSIONS {
        return Err(err(
            name("extensions"),
            format!("at most {} extension attributes are allowed", limits::EXTENSIONS),
        ));
    }
    if let Some((key, _)) = event.extensions.iter().find(|(_, v)| v.header_len() > limits::URI) {
        return Err(too_long(key, limits::URI));
    }
    Ok(())
}

pub(super) fn check_time(time: &Option<String>, at: &str, attribute: &str) -> Result<(), EventError> {
    if let Some(t) = time
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(err(format!("{at}{attribute}"), format!("{t:?} is not an RFC 3339 timestamp")));
    }
    Ok(())
}
