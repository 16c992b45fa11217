use super::*;
use http::HeaderValue;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

const BINARY: &[(&str, &str)] = &[
    ("ce-specversion", "1.0"),
    ("ce-id", "e-1"),
    ("ce-source", "/shop"),
    ("ce-type", "order.created"),
    ("ce-subject", "order/42"),
    ("ce-traceparent", "00-abc"),
    ("content-type", "application/json"),
];

#[test]
fn binary_mode_round_trips_through_the_json_format() {
    let ev =
        CloudEvent::from_binary(&headers(BINARY), Bytes::from_static(br#"{"total": 3}"#)).expect("valid");
    assert_eq!(ev.id, "e-1");
    assert_eq!(ev.extensions["traceparent"], ExtValue::String("00-abc".into()));
    let json = ev.to_json();
    assert_eq!(json["data"], serde_json::json!({"total": 3}));
    let back = CloudEvent::from_json_value(json, "").expect("round trip");
    assert_eq!(back.id, ev.id);
    assert_eq!(back.extensions, ev.extensions);
    assert_eq!(
        serde_json::from_slice::<Value>(back.data.as_ref().expect("data")).expect("json"),
        serde_json::json!({"total": 3})
    );
}

#[test]
fn binary_mode_names_the_missing_or_wrong_attribute() {
    for (drop, attr) in [
        ("ce-id", "ce-id"),
        ("ce-source", "ce-source"),
        ("ce-type", "ce-type"),
        ("ce-specversion", "ce-specversion"),
    ] {
        let pairs: Vec<_> = BINARY.iter().copied().filter(|(k, _)| *k != drop).collect();
        let e = CloudEvent::from_binary(&headers(&pairs), Bytes::new()).expect_err("missing attribute");
        assert_eq!(e.attribute, attr);
    }
    let mut pairs = BINARY.to_vec();
    pairs[0] = ("ce-specversion", "0.3");
    assert_eq!(
        CloudEvent::from_binary(&headers(&pairs), Bytes::new()).expect_err("bad version").attribute,
        "ce-specversion"
    );
    pairs[0] = ("ce-specversion", "1.0");
    pairs.push(("ce-time", "yesterday"));
    assert_eq!(
        CloudEvent::from_binary(&headers(&pairs), Bytes::new()).expect_err("bad time").attribute,
        "ce-time"
    );
}

#[test]
fn structured_mode_validates_types() {
    let e = CloudEvent::from_structured(br#"{"specversion":"1.0","id":7,"source":"/s","type":"t"}"#)
        .expect_err("id");
    assert_eq!((e.attribute.as_str(), e.problem.as_str()), ("id", "must be a string"));
    let e = CloudEvent::from_structured(b"{not json").expect_err("json");
    assert_eq!(e.attribute, "body");
    let e =
        CloudEvent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":"x"}"#)
            .expect_err("extension name");
    assert_eq!(e.attribute, "Bad");
    let e = CloudEvent::from_structured(br#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#)
        .expect_err("empty");
    assert_eq!(e.attribute, "source");
    let e = CloudEvent::from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
    )
    .expect_err("both");
    assert_eq!(e.attribute, "data");
}

#[test]
fn structured_mode_keeps_text_and_binary_payloads() {
    let ev = CloudEvent::from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hello"}"#,
    )
    .expect("text");
    assert_eq!(ev.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(ev.to_json()["data"], "hello");
    let ev = CloudEvent::from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#,
    )
    .expect("binary");
    assert_eq!(ev.data.as_deref(), Some(&[0u8, 1, 2][..]));
    assert_eq!(ev.to_json()["data_base64"], "AAEC");
}

#[test]
fn a_bad_batch_entry_rejects_the_batch_and_is_named() {
    let body = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#;
    let e = CloudEvent::from_batch(body).expect_err("second entry lacks id");
    assert_eq!(e.attribute, "batch[1].id");
    assert_eq!(CloudEvent::from_batch(b"{}").expect_err("not an array").attribute, "body");
    assert_eq!(CloudEvent::from_batch(b"[]").expect_err("empty").attribute, "body");
    let ok = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
    assert_eq!(CloudEvent::from_batch(ok).expect("valid").len(), 2);
}

#[test]
fn header_values_are_percent_coded() {
    assert_eq!(percent_encode("a b\u{e9}%"), "a b%C3%A9%25");
    assert_eq!(percent_decode("a b%C3%A9%25"), "a b\u{e9}%");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz%\u{e9}"), "%zz%\u{e9}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn attr() -> impl Strategy<Value = String> {
        "[ -~]{1,40}"
    }

    fn event() -> impl Strategy<Value = CloudEvent> {
        (
            attr(),
            attr(),
            "[a-z][a-z0-9.]{0,30}",
            proptest::option::of(attr()),
            proptest::collection::btree_map("[a-z0-9]{1,20}", "[ -~]{0,20}", 0..4),
            prop_oneof![
                Just(None),
                any::<i64>().prop_map(|n| Some((None, format!("{{\"n\":{n}}}").into_bytes()))),
                "[ -~]{0,50}".prop_map(|t| Some((Some("text/plain".to_string()), t.into_bytes()))),
                // JSON-declared payloads that may or may not be JSON, with stray whitespace.
                "[ -~]{0,30}".prop_map(|t| Some((
                    Some("application/json".to_string()),
                    format!(" {t} ").into_bytes()
                ))),
                proptest::collection::vec(any::<u8>(), 0..64)
                    .prop_map(|b| Some((Some("application/octet-stream".to_string()), b))),
            ],
        )
            .prop_filter("reserved extension names", |(_, _, _, _, ext, _)| {
                !ext.keys()
                    .any(|k| CONTEXT_ATTRIBUTES.contains(&k.as_str()) || k == "data" || k == "data_base64")
            })
            .prop_map(|(id, source, type_, subject, ext, data)| CloudEvent {
                id,
                source,
                type_,
                subject,
                time: None,
                datacontenttype: data.as_ref().and_then(|(ct, _)| ct.clone()),
                dataschema: None,
                extensions: ext.into_iter().map(|(k, v)| (k, ExtValue::String(v))).collect(),
                data: data.map(|(_, b)| Bytes::from(b)).filter(|b| !b.is_empty()),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn the_json_format_round_trips(ev in event()) {
            let back = CloudEvent::from_structured(&ev.to_json_bytes()).expect("our own output parses");
            prop_assert_eq!(back.id, ev.id);
            prop_assert_eq!(back.extensions, ev.extensions);
            // JSON payloads come back as the same JSON value (insignificant whitespace may go).
            let as_json = |d: &Option<Bytes>| d.as_ref().and_then(|d| serde_json::from_slice::<Value>(d).ok());
            match as_json(&ev.data) {
                Some(json) if ev.datacontenttype.as_deref().is_none_or(is_json_media_type) => {
                    prop_assert_eq!(as_json(&back.data), Some(json));
                }
                _ => prop_assert_eq!(back.data, ev.data),
            }
        }

        #[test]
        fn the_written_json_format_is_the_json_value(ev in event()) {
            let written: Value = serde_json::from_slice(&ev.to_json_bytes()).expect("valid JSON");
            prop_assert_eq!(written, ev.to_json());
        }

        #[test]
        fn batches_of_valid_events_parse_and_keep_order(evs in proptest::collection::vec(event(), 1..5)) {
            let body = serde_json::to_vec(&evs.iter().map(CloudEvent::to_json).collect::<Vec<_>>()).expect("json");
            let back = CloudEvent::from_batch(&body).expect("valid batch");
            prop_assert_eq!(back.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = CloudEvent::from_structured(&body);
            let _ = CloudEvent::from_batch(&body);
        }

        #[test]
        fn binary_headers_round_trip_through_percent_coding(value in "\\PC{0,40}") {
            prop_assert_eq!(percent_decode(&percent_encode(&value)), value.clone());
            prop_assert!(http::HeaderValue::from_str(&percent_encode(&value)).is_ok());
        }
    }
}

#[test]
fn json_data_is_kept_as_published_and_whitespace_around_the_event_is_fine() {
    let body = b"\n  {\"specversion\": \"1.0\", \"id\": \"1\", \"source\": \"/s\", \"type\": \"t\", \"data\": {\"a\": [1, 2]}}  \n";
    let ev = CloudEvent::from_structured(body).expect("valid");
    assert_eq!(ev.data.as_deref(), Some(&b"{\"a\": [1, 2]}"[..]), "the payload bytes exactly as published");
    let batch = format!("  [{}]", String::from_utf8_lossy(body));
    assert_eq!(CloudEvent::from_batch(batch.as_bytes()).expect("valid batch")[0], ev);
    assert_eq!(CloudEvent::from_structured(b" [1]").expect_err("array").attribute, "body");
}

#[test]
fn attributes_longer_than_a_failed_event_can_hold_are_refused_by_name() {
    let long = |n: usize| "x".repeat(n);
    let mut pairs = BINARY.to_vec();
    let id = long(limits::ID + 1);
    pairs[1] = ("ce-id", &id);
    let e = CloudEvent::from_binary(&headers(&pairs), Bytes::new()).expect_err("id too long");
    assert_eq!((e.attribute.as_str(), e.problem.as_str()), ("ce-id", "must be at most 1024 bytes"));

    let at_limit =
        serde_json::json!({"specversion": "1.0", "id": long(limits::ID), "source": "/s", "type": "t"});
    assert!(CloudEvent::from_json_value(at_limit, "").is_ok(), "the limit itself is allowed");
    for (attribute, value) in [
        ("source", long(limits::URI + 1)),
        ("subject", long(limits::URI + 1)),
        ("type", long(limits::TYPE + 1)),
        ("datacontenttype", format!("application/{}", long(limits::MEDIA_TYPE))),
        ("dataschema", long(limits::URI + 1)),
        ("partitionkey", long(limits::URI + 1)),
    ] {
        let mut event = serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        event[attribute] = value.into();
        let e = CloudEvent::from_json_value(event, "batch[2].").expect_err(attribute);
        assert_eq!(e.attribute, format!("batch[2].{attribute}"));
    }
    let mut many = serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
    for i in 0..=limits::EXTENSIONS {
        many[format!("ext{i}")] = "v".into();
    }
    assert!(CloudEvent::from_json_value(many, "").is_err(), "more extensions than a FailedEvent keeps");
}

/// CloudEvents forbids control characters in strings; a header could not carry them, and the
/// PostgreSQL store could not keep a NUL.
#[test]
fn attributes_with_control_characters_are_refused_by_name() {
    for (attribute, value) in
        [("id", "a\u{0}b"), ("source", "/s\n"), ("subject", "x\u{7f}"), ("traceid", "\u{1b}[31m")]
    {
        let mut event = serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        event[attribute] = value.into();
        let e = CloudEvent::from_json_value(event, "").expect_err(attribute);
        assert_eq!(
            (e.attribute.as_str(), e.problem.as_str()),
            (attribute, "must not contain control characters")
        );
    }
    let tab_free =
        serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "é ü"});
    assert!(CloudEvent::from_json_value(tab_free, "").is_ok(), "other characters are fine");
}
