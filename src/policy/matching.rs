//! Which subscriptions an event goes to.

use crate::api::WebhookSubscriptionSpec;
use crate::event::CloudEvent;

/// Whether `pattern` (exact, `prefix.*`, or `*`) matches the event type.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        None => pattern == event_type,
        Some("") => true,
        // `order.*` matches `order.created` and `order.refund.done`, not `order` or `orders.x`.
        Some(prefix) => event_type.len() > prefix.len() && event_type.starts_with(prefix),
    }
}

/// Whether a subscription wants an event: a type pattern matches and every filter set holds.
pub fn wants(spec: &WebhookSubscriptionSpec, event: &CloudEvent) -> bool {
    if !spec.event_types.iter().any(|p| type_matches(p, &event.type_)) {
        return false;
    }
    let Some(filter) = &spec.filter else { return true };
    if filter.source.as_ref().is_some_and(|s| *s != event.source) {
        return false;
    }
    if let Some(prefix) = &filter.subject_prefix {
        return event.subject.as_ref().is_some_and(|s| s.starts_with(prefix.as_str()));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "eventTypes: ['order.*']\nfilter: {source: /shop, subjectPrefix: 'eu/'}\nendpoint: {url: 'https://e.com/'}\n",
        )
        .expect("spec");
        assert!(wants(&spec, &event("order.created", "/shop", Some("eu/42"))));
        assert!(!wants(&spec, &event("order.created", "/other", Some("eu/42"))));
        assert!(!wants(&spec, &event("order.created", "/shop", Some("us/42"))));
        assert!(!wants(&spec, &event("order.created", "/shop", None)));
        assert!(!wants(&spec, &event("invoice.created", "/shop", Some("eu/42"))));
    }
}
