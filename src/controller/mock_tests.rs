//! Reconcile paths against a mocked API server (kube-rs's tower-test style): each scenario lists
//! the requests the controller must make, in order, and fails on any other.

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{Context, FINALIZER, Policy, reconcile};
use crate::api::WebhookSubscription;
use crate::api::fixtures::subscription;
use crate::delivery::Dispatchers;
use crate::delivery::budget::EventBudget;
use crate::delivery::status::StatusBoard;
use crate::metrics::Metrics;
use crate::outbound::clients::Clients;
use crate::outbound::secrets::SecretCache;
use crate::outbound::ssrf::Guard;
use crate::registry::Registry;
use crate::store::SqliteStore;
use crate::verify::Verifier;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request: method, path (without query), and the JSON answer.
struct Expect {
    method: Method,
    path: String,
    status: u16,
    answer: Value,
    /// Checks on the request body.
    check: Box<dyn Fn(&Value) + Send>,
}

fn expect(
    method: Method,
    path: &str,
    status: u16,
    answer: Value,
    check: impl Fn(&Value) + Send + 'static,
) -> Expect {
    Expect { method, path: path.to_string(), status, answer, check: Box::new(check) }
}

fn serve(mut handle: Handle, script: Vec<Expect>) -> JoinHandle<()> {
    tokio::spawn(async move {
        for step in script {
            let (request, send) = handle.next_request().await.expect("the controller made too few requests");
            assert_eq!(request.method(), step.method, "method of {}", request.uri());
            assert_eq!(request.uri().path(), step.path);
            let body = request.into_body().collect_bytes().await.expect("request body");
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (step.check)(&json);
            let response = Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&step.answer).expect("json")))
                .expect("response");
            send.send_response(response);
        }
    })
}

struct Fixture {
    ctx: Arc<Context>,
    _dir: tempfile::TempDir,
}

fn context(client: Client, policy: Policy) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
    let guard = Arc::new(Guard::default());
    let secrets = SecretCache::new(client.clone());
    let clients = Clients::new(guard.clone(), secrets.clone()).expect("http client");
    let metrics = Arc::new(Metrics::default());
    let dispatchers = Dispatchers::new(crate::delivery::Parts {
        store: store.clone(),
        clients: clients.clone(),
        secrets: secrets.clone(),
        board: StatusBoard::default(),
        metrics: metrics.clone(),
        budget: EventBudget::new(1 << 20, metrics.event_cache_bytes()),
        dead_letters_waiting: Default::default(),
        ownership: crate::ownership::Ownership::solo(),
        forward: None,
        recorder: kube::runtime::events::Recorder::new(client.clone(), crate::k8s::reporter()),
    });
    let verifier = Verifier { store: store.clone(), clients, guard, secrets, public_url: None };
    let ctx = Context::new(super::Parts {
        client,
        policy,
        registry: Registry::default(),
        metrics,
        dispatchers,
        verifier,
        ownership: crate::ownership::Ownership::solo(),
        catalog: crate::catalog::Catalog::default(),
    });
    Fixture { ctx: Arc::new(ctx), _dir: dir }
}

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

const SUB_PATH: &str = "/apis/hookline.dev/v1alpha1/namespaces/shop/webhooksubscriptions/orders";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn with_finalizer(mut sub: WebhookSubscription) -> WebhookSubscription {
    sub.meta_mut().finalizers = Some(vec![FINALIZER.to_string()]);
    sub
}

fn ready_reason(patch: &Value) -> String {
    patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_subscription_first_gets_the_finalizer() {
    let (client, handle) = mock();
    let sub = subscription("minimal.yaml");
    let answer = serde_json::to_value(with_finalizer(sub.clone())).expect("json");
    let server = serve(
        handle,
        vec![expect(Method::PATCH, SUB_PATH, 200, answer, |patch| {
            assert!(patch.to_string().contains(FINALIZER), "adds the finalizer: {patch}");
        })],
    );
    let f = context(client, Policy::default());
    let action = reconcile(Arc::new(sub), f.ctx.clone()).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    server.await.expect("scenario");
}

#[tokio::test]
async fn an_invalid_spec_is_a_condition_and_touches_no_secret() {
    let (client, handle) = mock();
    let mut sub = with_finalizer(subscription("minimal.yaml"));
    sub.spec.endpoint.headers.insert("Host".into(), "evil".into());
    let answer = serde_json::to_value(&sub).expect("json");
    let server = serve(
        handle,
        vec![
            expect(Method::PATCH, &format!("{SUB_PATH}/status"), 200, answer, |patch| {
                assert_eq!(ready_reason(patch), "InvalidSpec");
                let msg = patch.to_string();
                assert!(msg.contains("spec.endpoint.headers[Host]"), "{msg}");
                assert!(
                    patch["status"].get("deliveryStats").is_none(),
                    "the controller writes only its fields"
                );
            }),
            expect(Method::POST, EVENTS_PATH, 201, json!({}), |event| {
                assert_eq!(event["reason"], "InvalidSpec");
                assert_eq!(event["type"], "Warning");
            }),
        ],
    );
    let f = context(client, Policy::default());
    let action = reconcile(Arc::new(sub), f.ctx.clone()).await.expect("reconcile");
    assert_eq!(action, Action::await_change(), "an invalid spec waits for a change, not a retry loop");
    assert!(f.ctx.registry.is_empty(), "an invalid subscription never reaches the delivery side");
    server.await.expect("scenario");
}

#[tokio::test]
async fn a_valid_subscription_gets_its_signing_secret_then_becomes_ready() {
    let (client, handle) = mock();
    let mut sub = with_finalizer(subscription("minimal.yaml"));
    sub.spec.validation.method = crate::api::ValidationMethod::None;
    let answer = serde_json::to_value(&sub).expect("json");
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    let server = serve(
        handle,
        vec![
            expect(Method::GET, "/api/v1/namespaces/shop/secrets/orders-signing", 404, not_found, |_| {}),
            expect(
                Method::POST,
                "/api/v1/namespaces/shop/secrets",
                201,
                json!({"metadata": {"name": "orders-signing"}}),
                |secret| {
                    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "WebhookSubscription");
                    assert!(
                        secret["stringData"]["signingSecret"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("whsec_"))
                    );
                },
            ),
            expect(Method::POST, EVENTS_PATH, 201, json!({}), |event| {
                assert_eq!(event["reason"], "SigningSecretCreated")
            }),
            expect(Method::PATCH, &format!("{SUB_PATH}/status"), 200, answer, |patch| {
                assert_eq!(ready_reason(patch), "Active");
                assert_eq!(patch["status"]["signingSecretRef"]["name"], "orders-signing");
            }),
            expect(Method::POST, EVENTS_PATH, 201, json!({}), |event| assert_eq!(event["reason"], "Active")),
        ],
    );
    let f = context(client, Policy { allow_unverified: true, ..Policy::default() });
    let action = reconcile(Arc::new(sub.clone()), f.ctx.clone()).await.expect("reconcile");
    assert_ne!(action, Action::await_change(), "a healthy subscription is looked at again periodically");
    assert_eq!(f.ctx.registry.len(), 1, "registered for delivery");
    server.await.expect("scenario");
}

#[tokio::test]
async fn a_deleted_subscription_drops_its_queue_and_releases_the_finalizer() {
    let (client, handle) = mock();
    let mut sub = with_finalizer(subscription("minimal.yaml"));
    sub.meta_mut().deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let mut released = sub.clone();
    released.meta_mut().finalizers = None;
    let answer = serde_json::to_value(&released).expect("json");
    let server = serve(
        handle,
        vec![expect(Method::PATCH, SUB_PATH, 200, answer, |patch| {
            assert!(patch.to_string().contains("remove"), "removes the finalizer: {patch}");
        })],
    );
    let f = context(client, Policy::default());
    let store = f.ctx.store.clone();
    let uid = sub.uid().expect("uid");
    let event = crate::store::NewEvent {
        namespace: "shop".into(),
        source: "/s".into(),
        event_id: "1".into(),
        event_type: "t".into(),
        body: b"{}".to_vec(),
        targets: vec![uid.clone()],
        accepted_at: 1,
        partition: None,
    };
    store.accept(vec![event]).await.expect("queue a job");
    reconcile(Arc::new(sub), f.ctx.clone()).await.expect("reconcile");
    assert!(store.pending(&uid).await.expect("pending").is_empty(), "queued deliveries dropped");
    server.await.expect("scenario");
}
