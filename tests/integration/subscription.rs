//! The subscription controller, driven the way users drive it: kubectl against the local control
//! plane, with the real `hookline run` binary.

use std::time::Duration;

use crate::support::{TestEnv, wait_until};
use hookline::api::{WebhookSubscription, WebhookSubscriptionStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const WAIT: Duration = Duration::from_secs(30);

/// The (status, reason, message) of one condition.
fn condition(status: &WebhookSubscriptionStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Wait until `name`'s condition `type_` has `status`/`reason` for the subscription's current generation.
async fn wait_for_condition(
    api: &Api<WebhookSubscription>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> WebhookSubscription {
    wait_until(&format!("{name}: {type_}={status}/{reason}"), WAIT, || async {
        let sub = api.get(name).await.ok()?;
        let st = sub.status.as_ref()?;
        let (s, r, _) = condition(st, type_)?;
        (s == status && r == reason && st.observed_generation == sub.metadata.generation).then_some(sub)
    })
    .await
}

fn apply(env: &TestEnv, file: &str) {
    env.kubectl(&["apply", "-f", &format!("{EXAMPLES}/{file}")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn minimal_example_gets_a_signing_secret_and_waits_for_verification() {
    let env = TestEnv::with_crds("minimal-example").await;
    let _hookline = env.start_hookline(&[]).await;
    apply(&env, "minimal.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    let sub = wait_for_condition(&subs, "orders", "Ready", "False", "AwaitingValidation").await;
    assert!(sub.finalizers().iter().any(|f| f == "hookline.dev/cleanup"), "finalizer added");
    let status = sub.status.expect("status");
    let (v, reason, message) = condition(&status, "EndpointVerified").expect("EndpointVerified");
    // The example's host does not resolve on a machine without DNS: the handshake cannot start,
    // and the condition says so instead of pretending to wait.
    assert_eq!((v.as_str(), reason.as_str()), ("False", "ValidationFailed"), "{message}");
    assert!(message.contains("orders.example.com"), "{message}");
    assert_eq!(status.signing_secret_ref.expect("signingSecretRef").name, "orders-signing");

    let secret = env.api::<Secret>().get("orders-signing").await.expect("generated Secret");
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("WebhookSubscription", "orders", Some(true))
    );
    let key = secret.data.expect("data")["signingSecret"].0.clone();
    assert!(String::from_utf8(key).expect("utf8").starts_with("whsec_"));
}

#[tokio::test(flavor = "multi_thread")]
async fn full_example_uses_the_named_secret_and_creates_none() {
    let env = TestEnv::with_crds("full-example").await;
    let _hookline = env.start_hookline(&[]).await;
    apply(&env, "secrets.yaml");
    apply(&env, "full.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    let sub = wait_for_condition(&subs, "payments", "Ready", "False", "AwaitingValidation").await;
    assert_eq!(sub.status.expect("status").signing_secret_ref.expect("ref").name, "payments-signing");
    assert!(env.api::<Secret>().get_opt("payments-signing-signing").await.expect("get").is_none());
    let generated =
        env.kubectl(&["get", "secrets", "-l", "app.kubernetes.io/managed-by=hookline", "-o", "name"]);
    assert_eq!(generated.trim(), "", "no Secret is generated when spec.signing names one");
    // The example EventType's schema compiles and its example matches it.
    apply(&env, "eventtype.yaml");
    env.kubectl(&["wait", "--for=condition=Ready", "eventtype/order-created", "--timeout=30s"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_wait_for_ready_works_for_an_unverified_endpoint_when_allowed() {
    let env = TestEnv::with_crds("wait-ready").await;
    let _hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    env.kubectl(&["wait", "--for=condition=Ready", "webhooksubscription/dev-sink", "--timeout=30s"]);
    let row = env.kubectl(&["get", "whsub", "dev-sink", "--no-headers"]);
    assert!(row.contains("True") && row.contains("Active"), "printer columns show readiness: {row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unverified_endpoint_without_the_operator_flag_is_an_invalid_spec() {
    let env = TestEnv::with_crds("unverified-refused").await;
    let _hookline = env.start_hookline(&[]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    let sub = wait_for_condition(&subs, "dev-sink", "Ready", "False", "InvalidSpec").await;
    let (_, _, message) = condition(sub.status.as_ref().expect("status"), "Ready").expect("Ready");
    assert!(
        message.contains("spec.validation.method") && message.contains("--allow-unverified-endpoints"),
        "{message}"
    );
    let described = env.kubectl(&["describe", "whsub", "dev-sink"]);
    assert!(described.contains("InvalidSpec"), "a Warning Event explains it:\n{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_holds_and_resume_reactivates() {
    let env = TestEnv::with_crds("suspend").await;
    let _hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
    env.kubectl(&["patch", "whsub", "dev-sink", "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    wait_for_condition(&subs, "dev-sink", "Ready", "False", "Suspended").await;
    env.kubectl(&["patch", "whsub", "dev-sink", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_fires_at_expires_at() {
    let env = TestEnv::with_crds("expiry").await;
    let _hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    let expires = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = serde_json::json!({"spec": {"expiresAt": expires}});
    subs.patch("dev-sink", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("set expiresAt");
    let sub = wait_for_condition(&subs, "dev-sink", "Ready", "False", "Expired").await;
    let ready =
        sub.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Ready").expect("Ready");
    let fired = ready.last_transition_time.0;
    // The API server keeps whole seconds, so compare at that precision.
    let expires_second = jiff::Timestamp::from_second(expires_at.as_second()).expect("ts");
    assert!(fired >= expires_second, "expired at {fired}, before expiresAt {expires_second}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_breaking_the_crd_rules_is_refused_at_apply() {
    let env = TestEnv::with_crds("refused-at-apply").await;
    // The API server enforces the CRD's CEL rules (tests/integration/cel_server.rs covers each one); the
    // operator's own check of the same rules, for servers without CEL, is unit-tested in
    // controller::spec_check.
    let manifest = r#"{"apiVersion":"hookline.dev/v1alpha1","kind":"WebhookSubscription",
        "metadata":{"name":"bad"},
        "spec":{"eventTypes":["*"],"validation":{"method":"None"},
                "endpoint":{"url":"https://e.example.com/","headers":{"Webhook-Signature":"forged"}},
                "retryPolicy":{"initialBackoff":"10m","maxBackoff":"1m"}}}"#;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-bad.json", env.namespace));
    std::fs::write(&path, manifest).expect("write manifest");
    let out = env.kubectl_output(&["apply", "-f", path.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the manifest is refused");
    assert!(stderr.contains("spec.endpoint.headers") && stderr.contains("reserved headers"), "{stderr}");
    assert!(
        stderr.contains("spec.retryPolicy.maxBackoff") && stderr.contains("must not be shorter"),
        "{stderr}"
    );
    let subs: Api<WebhookSubscription> = env.api();
    assert!(subs.get_opt("bad").await.expect("get").is_none(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_spec_is_reported_and_recovers_when_fixed() {
    let env = TestEnv::with_crds("invalid-spec").await;
    // `validation.method: None` is valid to the API server; only an operator started with
    // --allow-unverified-endpoints accepts it.
    let _hookline = env.start_hookline(&[]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    let sub = wait_for_condition(&subs, "dev-sink", "Ready", "False", "InvalidSpec").await;
    let (_, _, message) = condition(sub.status.as_ref().expect("status"), "Ready").expect("Ready");
    assert!(message.contains("spec.validation.method"), "{message}");

    let fix = serde_json::json!({"spec": {"validation": {"method": "Event"}}});
    subs.patch("dev-sink", &PatchParams::default(), &Patch::Merge(&fix)).await.expect("fix");
    wait_for_condition(&subs, "dev-sink", "Ready", "False", "AwaitingValidation").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_signing_secret_is_never_overwritten() {
    let env = TestEnv::with_crds("keep-secret").await;
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "dev-sink-signing",
        "--from-literal=mine=whsec_dXNlci1vd25lZC1zZWNyZXQtdGhhdC1tdXN0LXN0YXk=",
    ]);
    let _hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
    let secret = env.api::<Secret>().get("dev-sink-signing").await.expect("secret");
    let data = secret.data.expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["mine"], "the user's Secret is left as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_removes_the_finalizer_and_the_generated_secret() {
    let env = TestEnv::with_crds("deletion").await;
    let _hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
    let secrets: Api<Secret> = env.api();
    assert!(secrets.get_opt("dev-sink-signing").await.expect("get").is_some());
    subs.delete("dev-sink", &DeleteParams::default()).await.expect("delete");
    wait_until("the subscription is gone (finalizer removed)", WAIT, || async {
        subs.get_opt("dev-sink").await.expect("get").is_none().then_some(())
    })
    .await;
    wait_until("the owned signing Secret is garbage-collected", Duration::from_secs(60), || async {
        secrets.get_opt("dev-sink-signing").await.expect("get").is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_subscription_causes_no_status_writes() {
    let env = TestEnv::with_crds("steady").await;
    let hookline = env.start_hookline(&["--allow-unverified-endpoints"]).await;
    apply(&env, "unverified.yaml");
    let subs: Api<WebhookSubscription> = env.api();
    wait_for_condition(&subs, "dev-sink", "Ready", "True", "Active").await;
    // Both writers' first writes are done: the controller's conditions (Ready) and the delivery
    // writer's, which reports the FailedEvent count once the dead-letter writer has counted
    // (0). Then the count of writes, once two polls agree (the metric moves just after a write
    // returns, so it may lag the status by a moment).
    wait_until("the delivery writer's first status write", WAIT, || async {
        subs.get("dev-sink").await.ok()?.status?.dead_letters.map(|_| ())
    })
    .await;
    let last = std::sync::Mutex::new(None);
    let writes_before = wait_until("the count of status writes settles", WAIT, || async {
        let now = hookline.metric("hookline_status_writes_total").await?;
        let before = last.lock().expect("lock").replace(now);
        (before == Some(now)).then_some(now)
    })
    .await;
    // Reconciles counted as finished (the duration is observed when one ends, after any write it
    // made; hookline_reconciles_total moves when one starts).
    const FINISHED: &str = "hookline_reconcile_duration_seconds_count";
    let reconciles_before = hookline.metric(FINISHED).await.expect("metric");
    // Touch the object without changing its spec: a reconcile runs, and nothing needs writing.
    env.kubectl(&["annotate", "whsub", "dev-sink", "example.com/touched=1"]);
    wait_until("the reconcile the annotation triggers has finished", WAIT, || async {
        let n = hookline.metric(FINISHED).await?;
        (n > reconciles_before).then_some(())
    })
    .await;
    let writes_after = hookline.metric("hookline_status_writes_total").await.expect("metric");
    assert_eq!(writes_before, writes_after, "a reconcile that changes nothing must not write status");
}

/// The recipe of docs/security.md: a ResourceQuota caps the subscriptions of a namespace; the 31st is refused
/// at create, naming the quota.
#[tokio::test(flavor = "multi_thread")]
async fn a_resource_quota_caps_the_subscriptions_of_a_namespace() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let env = TestEnv::with_crds("quota").await;
    env.kubectl(&["create", "quota", "webhooks", "--hard=count/webhooksubscriptions.hookline.dev=30"]);
    // The resourcequota controller fills in what the quota counts; admission waits for that.
    let quotas: Api<ResourceQuota> = env.api();
    wait_until("the quota's usage is known", WAIT, || async {
        let q = quotas.get("webhooks").await.ok()?;
        q.status?.used?.contains_key("count/webhooksubscriptions.hookline.dev").then_some(())
    })
    .await;
    let subs: Api<WebhookSubscription> = env.api();
    let sub = |i: usize| -> WebhookSubscription {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": format!("s{i}")},
            "spec": {"eventTypes": ["*"], "endpoint": {"url": "https://example.com/hook"}},
        }))
        .expect("subscription")
    };
    for i in 1..=30 {
        subs.create(&Default::default(), &sub(i)).await.unwrap_or_else(|e| panic!("subscription {i}: {e}"));
    }
    // Admission counts each create in the quota's status, and the resourcequota controller
    // recounts from its own cache every few seconds: until that cache has all 30, a recount can
    // lower the usage and let one more through. Wait until it counts 30.
    wait_until("the quota controller counts 30", WAIT, || async {
        let q = quotas.get("webhooks").await.ok()?;
        let used = q.status?.used?.get("count/webhooksubscriptions.hookline.dev")?.0.clone();
        (used == "30").then_some(())
    })
    .await;
    let refused = subs.create(&Default::default(), &sub(31)).await.expect_err("the 31st is over the quota");
    let message = refused.to_string();
    assert!(message.contains("exceeded quota: webhooks"), "{message}");
    assert_eq!(subs.list(&Default::default()).await.expect("list").items.len(), 30);
    // Deleting one makes room again once the resourcequota controller has counted the deletion.
    subs.delete("s1", &Default::default()).await.expect("delete");
    wait_until("room for one more", WAIT, || async { subs.create(&Default::default(), &sub(31)).await.ok() })
        .await;
}
