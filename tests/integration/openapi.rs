//! The OpenAPI document of the HTTP API: the committed `docs/openapi.json` is the generated one
//! and the one Hookline serves, and every response it documents is one a running Hookline
//! gives, with a body its schema describes (and every answer the test sees is documented).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Handshake, Receiver};
use crate::support::{
    Backend, LOCAL, POSTGRES, PrivatePostgres, SQLITE, StoreAt, TestEnv, fresh_database_on, wait_until,
};
use futures::StreamExt;
use hookline::api::{EventType, WebhookSubscription};
use kube::Api;
use kube::api::PostParams;
use reqwest::RequestBuilder;
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = std::fs::read_to_string(COMMITTED).expect("docs/openapi.json exists");
    assert!(
        committed == hookline::ingest::openapi::document(),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json` and commit it"
    );
}

/// One documented answer: method, path template and status.
type Answer = (String, String, u16);

/// The committed document, and the answers a test has seen of it.
struct Contract {
    doc: Value,
    http: reqwest::Client,
    seen: BTreeSet<Answer>,
}

impl Contract {
    fn load() -> Contract {
        let text = std::fs::read_to_string(COMMITTED).expect("docs/openapi.json exists");
        Contract {
            doc: serde_json::from_str(&text).expect("docs/openapi.json is JSON"),
            // The Hookline under test closes idle connections after its short `--read-timeout`:
            // without a pool no request meets a connection it is just closing.
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client"),
            seen: BTreeSet::new(),
        }
    }

    /// Every answer the document lists.
    fn documented(&self) -> BTreeSet<Answer> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for status in op["responses"].as_object().expect("responses").keys() {
                    all.insert((method.clone(), path.clone(), status.parse().expect("a status code")));
                }
            }
        }
        all
    }

    /// Check `value` against the schema at `schema` (a fragment of the document, whose `$ref`s
    /// point into its components).
    fn conforms(&self, schema: &Value, value: &Value, what: &str) {
        let root = json!({"allOf": [schema], "components": self.doc["components"]});
        let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
        let errors: Vec<String> =
            validator.iter_errors(value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{what} does not match its documented schema: {errors:?}\n{value}");
    }

    /// Send `request` (to `template`, the documented path), and check that its answer is
    /// documented, with a body of the documented schema and the documented headers; and, when
    /// the request was accepted, that its JSON body matches the documented request schema.
    async fn call(&mut self, template: &str, request: RequestBuilder) -> (u16, Value) {
        let request = request.build().expect("a request");
        let method = request.method().as_str().to_ascii_lowercase();
        let sent_type =
            request.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let sent: Option<Value> =
            request.body().and_then(|b| b.as_bytes()).and_then(|b| serde_json::from_slice(b).ok());
        let response = self.http.execute(request).await.expect("request sent");
        let status = response.status().as_u16();
        let what = format!("{} {template} → {status}", method.to_uppercase());
        let op = &self.doc["paths"][template][&method];
        assert!(op.is_object(), "{template} {method} is not documented");
        let documented = &op["responses"][status.to_string()];
        assert!(documented.is_object(), "{what} is not documented");
        for header in documented["headers"].as_object().into_iter().flatten().map(|(name, _)| name) {
            assert!(response.headers().contains_key(header.as_str()), "{what} lacks its documented {header}");
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match documented["content"].as_object() {
            Some(content) => {
                let schema =
                    &content.get("application/json").unwrap_or_else(|| panic!("{what}: JSON"))["schema"];
                if !schema.is_null() {
                    self.conforms(schema, &body, &what);
                }
            }
            None => assert_eq!(body, Value::Null, "{what} has no documented body"),
        }
        if (200..300).contains(&status)
            && let (Some(sent), Some(sent_type)) = (sent, sent_type)
        {
            let schema = &op["requestBody"]["content"][sent_type.as_str()]["schema"];
            if !schema.is_null() {
                self.conforms(schema, &sent, &format!("the request body of {what}"));
            }
        }
        self.seen.insert((method, template.to_string(), status));
        (status, body)
    }
}

const EVENTS: &str = "/v1/namespaces/{ns}/events";
const LOG: &str = "/v1/namespaces/{ns}/deliveries";
const SUB_LOG: &str = "/v1/namespaces/{ns}/webhooksubscriptions/{name}/deliveries";
const TEST: &str = "/v1/namespaces/{ns}/webhooksubscriptions/{name}/test";
const VALIDATE: &str = "/v1/validate/{token}";
const CLUSTER_LOG: &str = "/v1/deliveries";
const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

fn event(id: &str, type_: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": type_, "data": data})
}

/// The answers a store cannot be made to give here: SQLite is a file on Hookline's own disk
/// (never unreachable, so the validation URL cannot fail on it), and PostgreSQL's free space is
/// its server's (only a full server disk answers 507).
fn out_of_reach(store: Backend) -> BTreeSet<Answer> {
    let answer = |method: &str, path: &str, status| (method.to_string(), path.to_string(), status);
    match store {
        Backend::Sqlite => [answer("get", VALIDATE, 503)].into(),
        Backend::Postgres => [answer("post", EVENTS, 507)].into(),
    }
}

/// A kubeconfig like `env`'s whose API server is a closed port: a Hookline on it never gets ready.
fn unreachable_kubeconfig(env: &TestEnv) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&env.kubeconfig).expect("kubeconfig");
    let port = crate::support::free_port();
    let rewritten: String = text
        .lines()
        .map(|line| match line.split_once("server:") {
            Some((indent, _)) => format!("{indent}server: https://127.0.0.1:{port}\n"),
            None => format!("{line}\n"),
        })
        .collect();
    let path = env.data_dir().join("unreachable.kubeconfig");
    std::fs::write(&path, rewritten).expect("write kubeconfig");
    path
}

/// A body that sends its first bytes and then nothing: answered 408 after `--read-timeout`.
fn stalling() -> reqwest::Body {
    let first =
        futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"spec")) });
    reqwest::Body::wrap_stream(first.chain(futures::stream::pending()))
}

/// Wait until EventType `name` is `Ready=True`: its schema applies to publishes.
async fn schema_applies(env: &TestEnv, name: &str) {
    let api: Api<EventType> = env.api();
    wait_until(&format!("EventType {name}: Ready=True"), WAIT, || async {
        let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "True").then_some(())
    })
    .await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn every_documented_answer_is_one_hookline_gives(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("openapi", store).await;
    let ns = env.namespace.clone();
    let mut flags = LOCAL.to_vec();
    flags.extend(["--max-event-bytes=2048", "--public-url=auto", "--read-timeout=2s"]);
    let open = env.start_hookline(&flags).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url)).await;
    let et: EventType = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "EventType", "metadata": {"name": "order-created"},
        "spec": {"type": "order.created", "description": "An order was placed.",
                 "schema": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}},
    }))
    .expect("EventType");
    env.api::<EventType>().create(&PostParams::default(), &et).await.expect("create EventType");
    schema_applies(&env, "order-created").await;
    let mut c = Contract::load();
    let http = c.http.clone();
    let at = |base: &str, path: &str| format!("{base}{}", path.replace("{ns}", &ns).replace("{name}", "s"));
    let o = open.ingest.as_str();

    // The served document is the committed one.
    let (status, served) = c.call("/openapi.json", http.get(at(o, "/openapi.json"))).await;
    assert_eq!((status, &served), (200, &c.doc));

    // Publishing in the three modes.
    let publish = |base: &str, media: &str| http.post(at(base, EVENTS)).header("content-type", media);
    let (status, body) =
        c.call(EVENTS, publish(o, STRUCTURED).body(event("a", "t", json!({"n": 1})).to_string())).await;
    assert_eq!((status, body["events"][0]["matched"].as_u64()), (202, Some(1)), "{body}");
    let binary = publish(o, "text/plain").header("ce-specversion", "1.0").header("ce-id", "b");
    let binary = binary.header("ce-source", "/shop").header("ce-type", "t");
    assert_eq!(c.call(EVENTS, binary.body("hello")).await.0, 202);
    let batch = json!([event("c", "t", json!(1)), event("d", "t", json!(2))]);
    let (status, body) = c.call(EVENTS, publish(o, BATCH).body(batch.to_string())).await;
    assert_eq!((status, body["events"].as_array().map(Vec::len)), (202, Some(2)), "{body}");

    // Refused publishes.
    let missing_type = json!({"specversion": "1.0", "id": "x", "source": "/shop"});
    let (status, body) = c.call(EVENTS, publish(o, STRUCTURED).body(missing_type.to_string())).await;
    assert_eq!((status, body["attribute"].as_str()), (400, Some("type")), "{body}");
    let broken = json!([event("e", "t", json!(1)), event("f", "order.created", json!({"amount": "x"}))]);
    let (status, body) = c.call(EVENTS, publish(o, BATCH).body(broken.to_string())).await;
    assert_eq!(
        (status, body["index"].as_u64(), body["pointer"].as_str()),
        (400, Some(1), Some("/amount")),
        "{body}"
    );
    let elsewhere =
        http.post(format!("{o}/v1/namespaces/{ns}-gone/events")).header("content-type", STRUCTURED);
    assert_eq!(c.call(EVENTS, elsewhere.body(event("g", "t", json!(1)).to_string())).await.0, 404);
    let too_big = event("h", "t", json!("x".repeat(3000)));
    assert_eq!(c.call(EVENTS, publish(o, STRUCTURED).body(too_big.to_string())).await.0, 413);
    assert_eq!(c.call(EVENTS, publish(o, STRUCTURED).body(stalling())).await.0, 408);
    assert_eq!(c.call(EVENTS, publish(o, "text/plain").body("hi")).await.0, 415);

    // The delivery log, once the four events are delivered.
    rx.wait_for(4, WAIT).await;
    wait_until("four attempts logged", WAIT, || async {
        let page: Value = http.get(at(o, SUB_LOG)).send().await.ok()?.json().await.ok()?;
        (page["items"].as_array()?.len() >= 4).then_some(())
    })
    .await;
    let (status, page) = c.call(LOG, http.get(at(o, LOG) + "?outcome=delivered&limit=2")).await;
    assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(2)), "{page}");
    assert!(page["nextCursor"].is_string(), "{page}");
    let (status, page) = c.call(SUB_LOG, http.get(at(o, SUB_LOG) + "?eventId=a")).await;
    assert_eq!((status, page["items"][0]["eventId"].as_str()), (200, Some("a")), "{page}");
    assert!(page["nextCursor"].is_null(), "{page}");
    assert_eq!(c.call(LOG, http.get(at(o, LOG) + "?colour=red")).await.0, 400);
    assert_eq!(c.call(SUB_LOG, http.get(at(o, SUB_LOG) + "?subscription=s")).await.0, 400);
    assert_eq!(c.call(LOG, http.get(format!("{o}/v1/namespaces/{ns}-gone/deliveries"))).await.0, 404);
    let missing = format!("{o}/v1/namespaces/{ns}/webhooksubscriptions/nope/deliveries");
    assert_eq!(c.call(SUB_LOG, http.get(missing)).await.0, 404);
    // The cluster-wide log, of every namespace or narrowed to one subscription.
    let cluster = |query: &str| http.get(format!("{o}{CLUSTER_LOG}{query}"));
    let (status, body) = c.call(CLUSTER_LOG, cluster("")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.call(CLUSTER_LOG, cluster(&format!("?namespace={ns}&subscription=s"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.call(CLUSTER_LOG, cluster("?subscription=s")).await;
    assert_eq!(
        (status, body["error"].as_str().is_some_and(|e| e.contains("namespace"))),
        (400, true),
        "{body}"
    );
    assert_eq!(c.call(CLUSTER_LOG, cluster(&format!("?namespace={ns}&subscription=nope"))).await.0, 404);

    // Test events.
    let test = || http.post(at(o, TEST));
    let (status, sent) = c.call(TEST, test()).await;
    assert_eq!((status, sent["matched"].as_u64()), (202, Some(1)), "{sent}");
    let chosen = json!({"type": "order.created", "data": {"amount": 5}});
    let json_body = |body: &Value| test().header("content-type", "application/json").body(body.to_string());
    assert_eq!(c.call(TEST, json_body(&chosen)).await.0, 202);
    let (status, body) = c.call(TEST, json_body(&json!({"type": 5}))).await;
    assert_eq!((status, body["attribute"].as_str()), (400, Some("body")), "{body}");
    let (status, body) = c.call(TEST, json_body(&json!({"type": "order.created", "data": {}}))).await;
    assert_eq!((status, body["pointer"].as_str()), (400, Some("")), "{body}");
    assert_eq!(c.call(TEST, json_body(&json!({"data": "x".repeat(3000)}))).await.0, 413);
    assert_eq!(c.call(TEST, test().header("content-type", "text/plain").body("ping")).await.0, 415);
    assert_eq!(c.call(TEST, test().header("content-type", "application/json").body(stalling())).await.0, 408);
    let missing = format!("{o}/v1/namespaces/{ns}/webhooksubscriptions/nope/test");
    assert_eq!(c.call(TEST, http.post(missing)).await.0, 404);

    // The validation URL of an endpoint that ignores the handshake, opened twice.
    let pending = Receiver::start().await;
    pending.handshake(Handshake::Ignore);
    let sub: WebhookSubscription = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": "pending"},
        "spec": {"eventTypes": ["*"], "endpoint": {"url": pending.url}, "validation": {"method": "Event"}},
    }))
    .expect("subscription");
    env.api::<WebhookSubscription>().create(&PostParams::default(), &sub).await.expect("create");
    let link = wait_until("a validation request", WAIT, || async {
        Some(pending.validations().first()?["validationUrl"].as_str()?.to_string())
    })
    .await;
    assert!(link.starts_with(o), "{link}");
    let (status, body) = c.call(VALIDATE, http.get(&link)).await;
    assert_eq!((status, &body), (200, &json!({"verified": true})));
    assert_eq!(c.call(VALIDATE, http.get(&link)).await.0, 404, "a validation URL works once");

    // Refusals before the request is looked at: without a token, with a token RBAC allows
    // nothing, and (SQLite) with the store short of space. One Hookline at a time runs the
    // namespace's controller.
    open.kill().await;
    let guarded = env.start_hookline(&["--allow-http", "--min-free-disk=1000000000000000000"]).await;
    let g = guarded.ingest.as_str();
    env.kubectl(&["create", "serviceaccount", "producer"]);
    env.kubectl(&["create", "serviceaccount", "stranger"]);
    env.allow_publishing("producer");
    let producer = env.kubectl(&["create", "token", "producer"]).trim().to_string();
    let stranger = env.kubectl(&["create", "token", "stranger"]).trim().to_string();
    for (path, request) in [
        (EVENTS, publish(g, STRUCTURED).body(event("i", "t", json!(1)).to_string())),
        (LOG, http.get(at(g, LOG))),
        (SUB_LOG, http.get(at(g, SUB_LOG))),
        (TEST, http.post(at(g, TEST))),
        (CLUSTER_LOG, http.get(format!("{g}{CLUSTER_LOG}"))),
    ] {
        let again = request.try_clone().expect("a body in memory");
        assert_eq!(c.call(path, request).await.0, 401, "{path} without a token");
        assert_eq!(c.call(path, again.bearer_auth(&stranger)).await.0, 403, "{path} without RBAC");
    }
    // RBAC decisions are cached for a few seconds: poll until the new Role counts.
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        let request =
            publish(g, STRUCTURED).bearer_auth(&producer).body(event("j", "t", json!(1)).to_string());
        let answer = c.call(EVENTS, request).await;
        if answer.0 != 403 {
            break answer;
        }
        assert!(Instant::now() < deadline, "the Role never allowed publishing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match store {
        Backend::Sqlite => assert_eq!((status, body["error"].as_str().is_some()), (507, true), "{body}"),
        // A database server's free space is its own: only a full disk answers 507.
        Backend::Postgres => assert_eq!(status, 202, "{body}"),
    }

    // A Hookline that cannot reach the Kubernetes API never gets ready, and says so.
    let cut_off = env.with_kubeconfig(unreachable_kubeconfig(&env));
    let unready = cut_off.spawn_hookline_in(&cut_off.new_store().await, LOCAL);
    let u = unready.ingest.as_str();
    wait_until("the cut-off Hookline answers", WAIT, || async {
        http.get(format!("{u}/openapi.json")).send().await.ok().map(|_| ())
    })
    .await;
    for (path, request) in [
        (EVENTS, publish(u, STRUCTURED).body(event("l", "t", json!(1)).to_string())),
        (LOG, http.get(at(u, LOG))),
        (SUB_LOG, http.get(at(u, SUB_LOG))),
        (TEST, http.post(at(u, TEST))),
        (CLUSTER_LOG, http.get(format!("{u}{CLUSTER_LOG}"))),
    ] {
        let (status, body) = c.call(path, request).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body["error"].as_str().unwrap_or("").contains("not ready"), "{body}");
    }

    // PostgreSQL lost: the validation URL cannot be checked.
    let _lost = if store == POSTGRES {
        guarded.kill().await;
        let pg = PrivatePostgres::start(&format!("openapi-{}", std::process::id()));
        let lost = env.start_hookline_in(&StoreAt::Postgres(fresh_database_on(&pg.url).await), LOCAL).await;
        pg.crash();
        let link = format!("{}/v1/validate/any", lost.ingest);
        let deadline = Instant::now() + WAIT;
        while c.call(VALIDATE, http.get(&link)).await.0 != 503 {
            assert!(Instant::now() < deadline, "the validation URL never failed without its store");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some((pg, lost))
    } else {
        None
    };

    // Every documented answer was seen, but those this store cannot give.
    let unseen: BTreeSet<Answer> = c.documented().difference(&c.seen).cloned().collect();
    assert_eq!(unseen, out_of_reach(store), "documented answers the test did not see");
}
