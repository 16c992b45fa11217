//! Endpoint verification and the SSRF guard: no event goes to an endpoint that has not proven it
//! wants them, or that resolves to a private address.

use std::time::Duration;

use crate::support::receiver::{Handshake, Receiver, TestCa};
use crate::support::{TestEnv, wait_until};
use hookline::api::WebhookSubscription;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);
const FLAGS: &[&str] = &[
    "--ingest-auth=none",
    "--allow-http",
    "--allow-cidr=127.0.0.0/8",
    "--status-interval=1s",
    "--public-url=auto",
];

async fn create(env: &TestEnv, name: &str, url: &str, extra: Value) {
    let mut spec = json!({"eventTypes": ["*"], "endpoint": {"url": url}});
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    let sub: WebhookSubscription = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": name}, "spec": spec,
    }))
    .expect("subscription");
    env.api::<WebhookSubscription>().create(&PostParams::default(), &sub).await.expect("create");
}

/// Wait for EndpointVerified=`status`/`reason`; returns its message.
async fn verified(env: &TestEnv, name: &str, status: &str, reason: &str) -> String {
    let api: Api<WebhookSubscription> = env.api();
    wait_until(&format!("{name}: EndpointVerified={status}/{reason}"), WAIT, || async {
        let sub = api.get(name).await.ok()?;
        let c = sub.status?.conditions.into_iter().find(|c| c.type_ == "EndpointVerified")?;
        (c.status == status && c.reason == reason && c.observed_generation == sub.metadata.generation)
            .then_some(c.message)
    })
    .await
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t"})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_answer_verifies_and_events_flow() {
    let env = TestEnv::with_crds("verify-sync").await;
    let h = env.start_hookline(FLAGS).await;
    let rx = Receiver::start().await;
    create(&env, "s", &rx.url, json!({})).await;
    let msg = verified(&env, "s", "True", "Verified").await;
    assert!(msg.contains("echoed the validation code"), "{msg}");
    let validation = &rx.validations()[0];
    assert!(
        validation["validationUrl"].as_str().is_some_and(|u| u.contains("/v1/validate/")),
        "{validation}"
    );
    env.kubectl(&["wait", "--for=condition=Ready", "whsub/s", "--timeout=30s"]);
    h.publish_json(&env.namespace, event("e1")).await;
    assert_eq!(rx.wait_for(1, WAIT).await[0].header("ce-id"), "e1");
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_the_validation_url_verifies_later_and_only_once() {
    let env = TestEnv::with_crds("verify-async").await;
    let _h = env.start_hookline(FLAGS).await;
    let rx = Receiver::start().await;
    rx.handshake(Handshake::Ignore);
    create(&env, "s", &rx.url, json!({})).await;
    let msg = verified(&env, "s", "False", "Pending").await;
    assert!(
        msg.contains("validationResponse") && msg.contains("validationUrl"),
        "tells the user what to do: {msg}"
    );
    let url = rx.validations()[0]["validationUrl"].as_str().expect("validationUrl").to_string();
    let resp = reqwest::get(&url).await.expect("GET validation URL");
    assert_eq!(resp.status().as_u16(), 200);
    verified(&env, "s", "True", "Verified").await;
    assert_eq!(reqwest::get(&url).await.expect("GET again").status().as_u16(), 404, "single use");
    let bogus = url.rsplit_once('/').expect("path").0.to_string() + "/not-a-token";
    assert_eq!(reqwest::get(&bogus).await.expect("GET bogus").status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_ignores_the_handshake_gets_no_events() {
    let env = TestEnv::with_crds("verify-ignored").await;
    let h = env.start_hookline(FLAGS).await;
    let rx = Receiver::start().await;
    rx.handshake(Handshake::Ignore);
    create(&env, "s", &rx.url, json!({})).await;
    verified(&env, "s", "False", "Pending").await;
    h.publish_json(&env.namespace, event("held")).await;
    let api: Api<WebhookSubscription> = env.api();
    wait_until("the event is held", WAIT, || async {
        (api.get("s").await.ok()?.status?.delivery_stats?.pending == 1).then_some(())
    })
    .await;
    assert!(rx.received().is_empty(), "no event before verification");
    let described = env.kubectl(&["describe", "whsub", "s"]);
    assert!(
        described.contains("AwaitingValidation") && described.contains("hookline.dev/revalidate"),
        "{described}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_change_re_verifies_and_holds_events_meanwhile() {
    let env = TestEnv::with_crds("verify-url-change").await;
    let h = env.start_hookline(FLAGS).await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    second.handshake(Handshake::Ignore);
    create(&env, "s", &first.url, json!({})).await;
    verified(&env, "s", "True", "Verified").await;
    let api: Api<WebhookSubscription> = env.api();
    api.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"endpoint": {"url": second.url}}})),
    )
    .await
    .expect("change URL");
    verified(&env, "s", "False", "Pending").await;
    h.publish_json(&env.namespace, event("moved")).await;
    wait_until("held while the new URL is unverified", WAIT, || async {
        (api.get("s").await.ok()?.status?.delivery_stats?.pending == 1).then_some(())
    })
    .await;
    assert!(first.received().is_empty() && second.received().is_empty());
    second.handshake(Handshake::Answer);
    env.kubectl(&["annotate", "whsub", "s", "hookline.dev/revalidate=now"]);
    assert_eq!(second.wait_for(1, WAIT).await[0].header("ce-id"), "moved");
    assert!(first.received().is_empty(), "the old URL never gets the event");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_options_handshake_verifies_and_its_rate_is_honoured() {
    let env = TestEnv::with_crds("verify-options").await;
    let _h = env.start_hookline(FLAGS).await;
    let plain = Receiver::start().await;
    let limited = Receiver::start().await;
    limited.handshake(Handshake::AllowWithRate(60));
    create(&env, "plain", &plain.url, json!({"validation": {"method": "Options"}})).await;
    create(&env, "limited", &limited.url, json!({"validation": {"method": "Options"}})).await;
    let msg = verified(&env, "plain", "True", "Verified").await;
    assert!(msg.contains("OPTIONS"), "{msg}");
    let msg = verified(&env, "limited", "True", "Verified").await;
    assert!(msg.contains("60 requests per minute"), "the allowed rate is shown: {msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_are_blocked_unless_allowed() {
    let env = TestEnv::with_crds("verify-ssrf").await;
    let strict = ["--ingest-auth=none", "--allow-http", "--status-interval=1s"];
    let _h = env.start_hookline(&strict).await;
    let rx = Receiver::start().await;
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    create(&env, "loopback", &by_name, json!({})).await;
    create(&env, "metadata", "http://169.254.169.254/latest/meta-data", json!({})).await;
    let msg = verified(&env, "loopback", "False", "EndpointBlocked").await;
    assert!(msg.contains("127.0.0.1") || msg.contains("::1"), "names the address: {msg}");
    assert!(msg.contains("loopback"), "names the rule: {msg}");
    let msg = verified(&env, "metadata", "False", "EndpointBlocked").await;
    assert!(msg.contains("169.254.169.254") && msg.contains("link-local"), "{msg}");
    assert!(rx.validations().is_empty(), "nothing was sent to a blocked address");
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_networks_pass_the_guard() {
    let env = TestEnv::with_crds("verify-ssrf-allowed").await;
    let allowed = ["--ingest-auth=none", "--allow-http", "--allow-cidr=127.0.0.0/8", "--allow-cidr=::1/128"];
    let _h = env.start_hookline(&allowed).await;
    let rx = Receiver::start().await;
    create(&env, "loopback", &rx.url.replace("127.0.0.1", "localhost"), json!({})).await;
    verified(&env, "loopback", "True", "Verified").await;
}

/// Point the subscription at a CA bundle Secret and ask for a fresh handshake at once.
async fn trust(env: &TestEnv, name: &str, secret: &str) {
    let patch = json!({
        "metadata": {"annotations": {"hookline.dev/revalidate": secret}},
        "spec": {"endpoint": {"caBundleFrom": {"secretRef": {"name": secret}}}},
    });
    env.api::<WebhookSubscription>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch caBundleFrom");
}

async fn ca_secret(env: &TestEnv, name: &str, pem: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "stringData": {"ca.crt": pem},
    }))
    .expect("secret");
    env.api::<Secret>().create(&PostParams::default(), &secret).await.expect("create CA secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_until_the_subscription_names_its_ca() {
    let env = TestEnv::with_crds("verify-tls").await;
    let h = env.start_hookline(FLAGS).await;
    let ca = TestCa::new("Hookline test CA");
    let rx = Receiver::start_tls(&ca).await;
    create(&env, "s", &rx.url, json!({})).await;
    let msg = verified(&env, "s", "False", "Pending").await;
    assert!(msg.contains("certificate"), "names the TLS problem: {msg}");

    // Another CA's bundle does not make the certificate trusted.
    ca_secret(&env, "other-ca", &TestCa::new("Another CA").ca_pem).await;
    trust(&env, "s", "other-ca").await;
    let msg = verified(&env, "s", "False", "Pending").await;
    assert!(msg.contains("certificate"), "still refused: {msg}");
    // A key without a certificate is named as such.
    ca_secret(&env, "not-a-ca", "hello").await;
    trust(&env, "s", "not-a-ca").await;
    let msg = verified(&env, "s", "False", "Pending").await;
    assert!(msg.contains("holds no PEM certificate"), "{msg}");
    assert!(rx.validations().is_empty(), "nothing reached the endpoint over an untrusted connection");

    ca_secret(&env, "private-ca", &ca.ca_pem).await;
    trust(&env, "s", "private-ca").await;
    verified(&env, "s", "True", "Verified").await;
    env.kubectl(&["wait", "--for=condition=Ready", "whsub/s", "--timeout=30s"]);
    h.publish_json(&env.namespace, event("over-tls")).await;
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), "over-tls");
    assert!(got[0].header("webhook-signature").starts_with("v1,"), "signed as usual");
}
