//! The event catalog: EventTypes report whether their schema and example hold, publishes whose
//! data breaks the schema of their type are refused whole (single, structured and batch mode)
//! with the failing JSON pointer, test events carry a chosen payload checked the same way, and a
//! subscription naming a type the catalog lacks gets a Warning Event.

use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::Receiver;
use crate::support::{Backend, Hookline, LOCAL, POSTGRES, SQLITE, TestEnv, wait_until};
use hookline::api::{EventType, WebhookSubscription};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");
const BATCH: (&str, &str) = ("content-type", "application/cloudevents-batch+json");

/// An EventType manifest; `schema` and `example` are JSON (YAML's flow style).
fn event_type(name: &str, type_: &str, schema: Option<Value>, example: Option<Value>) -> String {
    let mut spec = json!({"type": type_, "description": format!("{type_} happened")});
    if let Some(s) = schema {
        spec["schema"] = s;
    }
    if let Some(e) = example {
        spec["example"] = e;
    }
    json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "EventType", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

fn order_schema() -> Value {
    json!({
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number", "minimum": 0}, "currency": {"type": "string"}}
    })
}

/// Wait until EventType `name` has `Ready` (status, reason); returns its message.
async fn ready(env: &TestEnv, name: &str, status: &str, reason: &str) -> String {
    let api: Api<EventType> = env.api();
    wait_until(&format!("EventType {name}: Ready={status}/{reason}"), WAIT, || async {
        let et = api.get(name).await.ok()?;
        let c = et.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == status && c.reason == reason).then_some(c.message)
    })
    .await
}

fn event(id: &str, type_: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": type_, "data": data})
}

async fn publish(h: &Hookline, ns: &str, header: (&str, &str), body: String) -> (u16, Value) {
    h.publish(ns, &[header], body, None).await
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn published_data_that_breaks_its_event_type_s_schema_is_refused_whole(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("catalog-publish", store).await;
    let h = env.start_hookline(LOCAL).await;
    let ns = env.namespace.clone();
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url).for_types(&["order.*", "x.*"])).await;
    env.apply(&event_type(
        "order-created",
        "order.created",
        Some(order_schema()),
        Some(json!({"amount": 12.5})),
    ));
    ready(&env, "order-created", "True", "Valid").await;
    let out = env.kubectl(&["get", "eventtypes"]);
    assert!(
        out.contains("TYPE") && out.contains("DESCRIPTION") && out.contains("order.created happened"),
        "kubectl get eventtypes is the catalog: {out}"
    );

    // Single (structured), binary and batch mode: refused with the attribute and the pointer.
    let bad = event("bad-1", "order.created", json!({"amount": "twelve"}));
    let (status, body) = publish(&h, &ns, STRUCTURED, bad.to_string()).await;
    assert_eq!(
        (status, body["attribute"].as_str(), body["pointer"].as_str()),
        (400, Some("data"), Some("/amount")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap_or("").contains(&format!("EventType {ns}/order-created")),
        "{body}"
    );
    assert!(body.get("index").is_none(), "no index outside a batch: {body}");
    let binary = reqwest::Client::new()
        .post(format!("{}/v1/namespaces/{ns}/events", h.ingest))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bad-2")
        .header("ce-source", "/shop")
        .header("ce-type", "order.created")
        .header("content-type", "application/json")
        .body(r#"{"currency": "EUR"}"#)
        .send()
        .await
        .expect("binary publish");
    assert_eq!(binary.status().as_u16(), 400);
    let body: Value = binary.json().await.expect("json");
    assert_eq!(body["pointer"], "", "the missing property is reported at data itself: {body}");
    let batch = json!([
        event("b-0", "order.created", json!({"amount": 1})),
        event("b-1", "other.type", json!("anything")),
        event("b-2", "order.created", json!({"amount": -1})),
    ]);
    let (status, body) = publish(&h, &ns, BATCH, batch.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["index"].as_u64(), body["attribute"].as_str()),
        (Some(2), Some("batch[2].data")),
        "{body}"
    );
    assert_eq!(body["pointer"], "/amount");
    // Non-JSON data cannot match a schema.
    let text = json!({"specversion": "1.0", "id": "t-1", "source": "/shop", "type": "order.created",
                      "datacontenttype": "text/plain", "data": "12"});
    assert_eq!(publish(&h, &ns, STRUCTURED, text.to_string()).await.0, 400);

    // Nothing of a refused batch was stored: its valid first event is new when sent alone.
    let first = h.publish_json(&ns, event("b-0", "order.created", json!({"amount": 1}))).await;
    assert_eq!(first["events"][0]["duplicate"], false, "{first}");
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), "b-0");

    // Bad EventTypes are named in their condition and check nothing.
    env.apply(&event_type("broken", "x.broken", Some(json!({"type": "nonsense"})), None));
    env.apply(&event_type(
        "remote",
        "x.remote",
        Some(json!({"$ref": "https://example.com/order.json"})),
        None,
    ));
    env.apply(&event_type("bad-example", "x.example", Some(order_schema()), Some(json!({"amount": "1"}))));
    let m = ready(&env, "broken", "False", "InvalidSchema").await;
    assert!(m.contains("spec.schema does not compile"), "{m}");
    let m = ready(&env, "remote", "False", "InvalidSchema").await;
    assert!(m.contains("https://example.com/order.json") && m.contains("may not fetch"), "{m}");
    let m = ready(&env, "bad-example", "False", "InvalidExample").await;
    assert!(m.contains("\"/amount\""), "{m}");
    h.publish_json(&ns, event("x-1", "x.broken", json!("not an object"))).await;

    // A second EventType of a type is not used; the oldest is.
    env.apply(&event_type("order-created-too", "order.created", None, None));
    let m = ready(&env, "order-created-too", "False", "DuplicateType").await;
    assert!(m.contains("order-created"), "{m}");
    assert_eq!(publish(&h, &ns, STRUCTURED, bad.to_string()).await.0, 400);

    // Once the EventType with the schema is gone, the other is used and the data passes.
    let api: Api<EventType> = env.api();
    api.delete("order-created", &DeleteParams::default()).await.expect("delete");
    wait_until("the schema no longer applies", WAIT, || async {
        (publish(&h, &ns, STRUCTURED, bad.to_string()).await.0 == 202).then_some(())
    })
    .await;
    ready(&env, "order-created-too", "True", "Valid").await;

    // A subscription naming an exact type the catalog lacks gets a Warning Event naming it.
    env.create_active(WebhookSubscription::test("typo", &rx.url).for_types(&[
        "order.created",
        "order.craeted",
        "x.*",
    ]))
    .await;
    let note = wait_until("a Warning Event UnknownEventType", WAIT, || async {
        let list = env.api::<Event>().list(&ListParams::default()).await.ok()?.items;
        list.into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("UnknownEventType")
                    && e.involved_object.name.as_deref() == Some("typo")
            })
            .and_then(|e| e.message)
    })
    .await;
    assert!(note.contains("\"order.craeted\"") && !note.contains("\"order.created\""), "{note}");
    assert!(env.api::<Event>().list(&ListParams::default()).await.expect("events").items.iter().all(|e| {
        e.reason.as_deref() != Some("UnknownEventType") || e.involved_object.name.as_deref() == Some("typo")
    }));
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn test_events_carry_a_chosen_payload_checked_against_the_catalog(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("catalog-test-events", store).await;
    let h = env.start_hookline(LOCAL).await;
    let ns = env.namespace.clone();
    let rx = Receiver::start().await;
    // The test event goes to the named subscription whatever its type filters.
    env.create_active(WebhookSubscription::test("s", &rx.url).for_types(&["never.matches"]).structured())
        .await;
    env.apply(&event_type("order-created", "order.created", Some(order_schema()), None));
    ready(&env, "order-created", "True", "Valid").await;
    let test = |body: Option<(&'static str, String)>| {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/namespaces/{ns}/webhooksubscriptions/s/test", h.ingest));
        if let Some((ct, body)) = body {
            req = req.header("content-type", ct).body(body);
        }
        async move {
            let resp = req.send().await.expect("test request");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let json_body = |v: Value| Some(("application/json", v.to_string()));

    let (status, body) = test(json_body(json!({"type": "order.created", "data": {"amount": 7}}))).await;
    assert_eq!((status, body["matched"].as_u64()), (202, Some(1)), "{body}");
    let got = rx.wait_for(1, WAIT).await;
    let sent: Value = serde_json::from_slice(&got[0].body).expect("structured event");
    assert_eq!((sent["type"].as_str(), &sent["data"]), (Some("order.created"), &json!({"amount": 7})));
    assert_eq!(sent["id"], body["id"], "the answer's id is the event's");

    // Without a body: today's ping.
    assert_eq!(test(None).await.0, 202);
    let got = rx.wait_for(2, WAIT).await;
    let ping: Value = serde_json::from_slice(&got[1].body).expect("structured event");
    assert_eq!(ping["type"], "dev.hookline.test");

    // Bad bodies: data against the schema, a type of the wrong JSON type, unknown fields, bad
    // types, another media type.
    let (status, body) = test(json_body(json!({"type": "order.created", "data": {"amount": "7"}}))).await;
    assert_eq!(
        (status, body["pointer"].as_str(), body["attribute"].as_str()),
        (400, Some("/amount"), Some("data")),
        "{body}"
    );
    let (status, body) = test(json_body(json!({"type": 5}))).await;
    assert_eq!((status, body["attribute"].as_str()), (400, Some("body")), "{body}");
    let (status, body) = test(json_body(json!({"type": "t", "datta": 1}))).await;
    assert!(status == 400 && body["error"].as_str().unwrap_or("").contains("datta"), "{status} {body}");
    let (status, body) = test(json_body(json!({"type": ""}))).await;
    assert_eq!((status, body["attribute"].as_str()), (400, Some("type")), "{body}");
    assert_eq!(test(Some(("text/plain", "hi".into()))).await.0, 415);
    assert_eq!(rx.received().len(), 2, "nothing refused was sent");
}
