//! Which subscriptions an event goes to.

use super::filter::{CelEvent, CelFilter};
use crate::api::WebhookSubscriptionSpec;

/// Whether `pattern` (exact, `prefix.*`, or `*`) matches the event type.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        None => pattern == event_type,
        Some("") => true,
        // `order.*` matches `order.created` and `order.refund.done`, not `order` or `orders.x`.
        Some(prefix) => event_type.len() > prefix.len() && event_type.starts_with(prefix),
    }
}

/// Whether a subscription wants an event: a type pattern matches and every filter set holds
/// (the CEL filter last, compiled as `cel`). A CEL filter that fails on the event is an error,
/// and no match.
pub fn wants(
    spec: &WebhookSubscriptionSpec,
    cel: Option<&CelFilter>,
    event: &CelEvent<'_>,
) -> Result<bool, String> {
    let e = event.event();
    if !spec.event_types.iter().any(|p| type_matches(p, &e.type_)) {
        return Ok(false);
    }
    let Some(filter) = &spec.filter else { return Ok(true) };
    if filter.source.as_ref().is_some_and(|s| *s != e.source) {
        return Ok(false);
    }
    if let Some(prefix) = &filter.subject_prefix
        && !e.subject.as_ref().is_some_and(|s| s.starts_with(prefix.as_str()))
    {
        return Ok(false);
    }
    match cel {
        Some(cel) => cel.matches(event),
        None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CloudEvent;

    #[test]
    fn type_patterns() {
        assert!(type_matches("*", "anything"));
        assert!(type_matches("order.created", "order.created"));
        assert!(!type_matches("order.created", "order.created.v2"));
        assert!(type_matches("order.*", "order.created"));
        assert!(type_matches("order.*", "order.refund.done"));
        assert!(!type_matches("order.*", "order"));
        assert!(!type_matches("order.*", "order."));
        assert!(!type_matches("order.*", "orders.created"));
    }

    fn event(type_: &str, source: &str, subject: Option<&str>) -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: source.into(),
            type_: type_.into(),
            subject: subject.map(Into::into),
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Default::default(),
            data: None,
        }
    }

    #[test]
    fn filters_must_all_hold() {
        let spec: WebhookSubscriptionSpec = serde_yaml::from_str(
            "eventTypes: ['order.*']\nfilter: {source: /shop, subjectPrefix: 'eu/', cel: 'event.id != \"skip\"'}\nendpoint: {url: 'https://e.com/'}\n",
        )
        .expect("spec");
        let cel = CelFilter::compile(spec.filter.as_ref().and_then(|f| f.cel.as_deref()).expect("cel"))
            .expect("compiles");
        let wants = |e: CloudEvent| wants(&spec, Some(&cel), &CelEvent::new(&e)).expect("evaluates");
        assert!(wants(event("order.created", "/shop", Some("eu/42"))));
        assert!(!wants(event("order.created", "/other", Some("eu/42"))));
        assert!(!wants(event("order.created", "/shop", Some("us/42"))));
        assert!(!wants(event("order.created", "/shop", None)));
        assert!(!wants(event("invoice.created", "/shop", Some("eu/42"))));
        let mut skipped = event("order.created", "/shop", Some("eu/42"));
        skipped.id = "skip".into();
        assert!(!wants(skipped));
    }
}
