//! The main job end to end: events published to the real `hookline run` reach real receivers on
//! loopback, signed, retried and reported in status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{Backend, Hookline, LOCAL, POSTGRES, SQLITE, TestEnv, wait_until};
use base64::Engine;
use hookline::api::WebhookSubscription;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_for_ready(
    api: &Api<WebhookSubscription>,
    name: &str,
    status: &str,
    reason: &str,
) -> WebhookSubscription {
    wait_until(&format!("{name} Ready={status}/{reason}"), WAIT, || async {
        let sub = api.get(name).await.ok()?;
        let c = sub.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        (c.status == status && c.reason == reason).then_some(sub)
    })
    .await
}

fn event(id: &str, type_: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": type_, "subject": "eu/1", "data": {"n": id}})
}

/// Check requests with the reference Python libraries (standardwebhooks, cloudevents).
fn verify_with_reference_libraries(
    secrets: &[String],
    requests: &[crate::support::receiver::Received],
) -> Vec<Value> {
    let python = std::env::var("HOOKLINE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let reqs: Vec<Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or_default().to_string())))
                .collect();
            json!({"headers": headers, "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body)})
        })
        .collect();
    let input = json!({"secrets": secrets, "requests": reqs}).to_string();
    let mut child = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/verify.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with standardwebhooks and cloudevents (hack/test.sh installs them)");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = crate::support::blocking(|| child.wait_with_output()).expect("verify.py");
    assert!(out.status.success(), "reference verification failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

async fn signing_secret(env: &TestEnv, name: &str) -> String {
    let secret = env.api::<Secret>().get(name).await.expect("signing secret");
    String::from_utf8(secret.data.expect("data")["signingSecret"].0.clone()).expect("utf-8")
}

async fn delivery_log(h: &Hookline, ns: &str, sub: &str, query: &str) -> Value {
    let url = format!("{}/v1/namespaces/{ns}/webhooksubscriptions/{sub}/deliveries{query}", h.ingest);
    reqwest::get(url).await.expect("log request").json().await.expect("log json")
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn events_in_all_three_modes_reach_matching_subscriptions_only(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("three-modes", store).await;
    let h = env.start_hookline(LOCAL).await;
    let orders = Receiver::start().await;
    let filtered = Receiver::start().await;
    let invoices = Receiver::start().await;
    env.create_active(WebhookSubscription::test("orders", &orders.url).for_types(&["order.*"])).await;
    let eu_shop = WebhookSubscription::test("eu-shop", &filtered.url).for_types(&["order.created"]);
    env.create_active(eu_shop.filtered("/shop", "eu/").structured()).await;
    env.create_active(WebhookSubscription::test("invoices", &invoices.url).for_types(&["invoice.*"])).await;
    let ns = env.namespace.as_str();

    // Binary mode.
    let (status, body) = h
        .publish(
            ns,
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b1"),
                ("ce-source", "/shop"),
                ("ce-type", "order.created"),
                ("ce-subject", "eu/7"),
                ("content-type", "application/json"),
            ],
            r#"{"mode":"binary"}"#,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0]["matched"], 2, "orders and eu-shop match: {body}");
    // Structured mode, a source the filter rejects.
    let mut other = event("s1", "order.created");
    other["source"] = "/elsewhere".into();
    assert_eq!(h.publish_json(ns, other).await["events"][0]["matched"], 1);
    // Batch mode: one order.paid (orders only) and one invoice.
    let batch = json!([event("k1", "order.paid"), event("k2", "invoice.sent")]).to_string();
    let (status, body) =
        h.publish(ns, &[("content-type", "application/cloudevents-batch+json")], batch, None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["events"][0]["matched"].as_u64(), body["events"][1]["matched"].as_u64()),
        (Some(1), Some(1))
    );
    // Another namespace: never delivered to this namespace's subscriptions.
    assert_eq!(h.publish_json("default", event("x1", "order.created")).await["events"][0]["matched"], 0);

    let got = orders.wait_for(3, WAIT).await;
    let mut ids: Vec<String> = got.iter().map(|r| r.header("ce-id")).collect();
    ids.sort();
    assert_eq!(ids, ["b1", "k1", "s1"]);
    let got_filtered = filtered.wait_for(1, WAIT).await;
    assert_eq!(got_filtered[0].header("content-type"), "application/cloudevents+json");
    let got_invoices = invoices.wait_for(1, WAIT).await;
    assert_eq!(got_invoices[0].header("ce-id"), "k2");

    // The subscriber's own libraries accept every request.
    let parsed = verify_with_reference_libraries(&[signing_secret(&env, "orders-signing").await], &got);
    let binary = parsed.iter().find(|p| p["id"] == "b1").expect("b1 parsed");
    assert_eq!(binary["data"], json!({"mode": "binary"}));
    let parsed =
        verify_with_reference_libraries(&[signing_secret(&env, "eu-shop-signing").await], &got_filtered);
    assert_eq!(parsed[0]["id"], "b1");

    // Nothing more arrives for the non-matching events: the receivers' counts are exact once every
    // queue is empty.
    let subs: Api<WebhookSubscription> = env.api();
    for name in ["orders", "eu-shop", "invoices"] {
        wait_until(&format!("{name} has nothing pending"), WAIT, || async {
            let st = subs.get(name).await.ok()?.status?;
            (st.delivery_stats?.pending == 0).then_some(())
        })
        .await;
    }
    assert_eq!((orders.received().len(), filtered.received().len(), invoices.received().len()), (3, 1, 1));
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_retried_on_the_backoff_schedule(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("retry-schedule", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.script([Reply::Status(500), Reply::Status(503), Reply::Status(502)]);
    env.create_active(WebhookSubscription::test("s", &rx.url).backoff("1s", "4s")).await;
    h.publish_json(&env.namespace, event("r1", "order.created")).await;
    let got = rx.wait_for(4, WAIT).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == "r1"), "the same webhook-id on every attempt");
    let gaps: Vec<f64> = got.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64()).collect();
    for (gap, base) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            // Never early; late only by scheduling slack on a loaded 2-core CI machine.
            *gap >= base * 0.8 - 0.05 && *gap <= base * 1.2 + 1.5,
            "gap {gap:.2}s for a {base}s backoff: {gaps:?}"
        );
    }
    let log = delivery_log(&h, &env.namespace, "s", "").await;
    let outcomes: Vec<&str> =
        log["items"].as_array().expect("items").iter().map(|e| e["outcome"].as_str().unwrap_or("")).collect();
    assert_eq!(outcomes, ["delivered", "retry", "retry", "retry"], "newest first");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("retry-after", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.script([Reply::RetryAfter(429, 3)]);
    env.create_active(WebhookSubscription::test("s", &rx.url).backoff("100ms", "10s")).await;
    h.publish_json(&env.namespace, event("ra", "t")).await;
    let got = rx.wait_for(2, WAIT).await;
    let gap = (got[1].at - got[0].at).as_secs_f64();
    assert!(gap >= 2.9, "Retry-After: 3 was honoured, waited {gap:.2}s");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn gone_disables_the_subscription_and_holds_later_events(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("gone", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(410));
    env.create_active(WebhookSubscription::test("s", &rx.url)).await;
    h.publish_json(&env.namespace, event("g1", "t")).await;
    let subs: Api<WebhookSubscription> = env.api();
    let sub = wait_for_ready(&subs, "s", "False", "Disabled").await;
    let healthy =
        sub.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Healthy").expect("Healthy");
    assert_eq!((healthy.status.as_str(), healthy.reason.as_str()), ("False", "EndpointGone"));
    h.publish_json(&env.namespace, event("g2", "t")).await;
    wait_until("g2 is held (pending 1)", WAIT, || async {
        let st = subs.get("s").await.ok()?.status?;
        (st.delivery_stats?.pending == 1).then_some(())
    })
    .await;
    assert_eq!(rx.received().len(), 1, "nothing is sent after 410");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_never_followed(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("no-redirects", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    // Redirects to the cloud metadata address and to the receiver itself: neither is followed.
    let metadata = "http://169.254.169.254/latest/meta-data/".to_string();
    let elsewhere = rx.url.replace("/hook", "/elsewhere");
    rx.script([Reply::Redirect(301, metadata.clone()), Reply::Redirect(302, metadata)]);
    rx.set_default(Reply::Redirect(307, elsewhere));
    env.create_active(WebhookSubscription::test("s", &rx.url).max_attempts(3).initial_backoff("200ms")).await;
    h.publish_json(&env.namespace, event("rd", "t")).await;
    let log = wait_until("three attempts in the log", WAIT, || async {
        let log = delivery_log(&h, &env.namespace, "s", "").await;
        (log["items"].as_array()?.len() == 3).then_some(log)
    })
    .await;
    let codes: Vec<u64> =
        log["items"].as_array().expect("items").iter().filter_map(|i| i["statusCode"].as_u64()).collect();
    assert_eq!(codes, [307, 302, 301], "newest first: {log}");
    assert_eq!(log["items"][0]["outcome"], "deadLettered");
    assert!(rx.received().iter().all(|r| r.path == "/hook"), "no redirect target was ever requested");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn suspend_holds_events_and_resume_delivers_them(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("suspend-delivery", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    env.create(WebhookSubscription::test("s", &rx.url).suspended(), ("False", "Suspended")).await;
    h.publish_json(&env.namespace, event("h1", "t")).await;
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("the held event is counted as pending", WAIT, || async {
        (subs.get("s").await.ok()?.status?.delivery_stats?.pending == 1).then_some(())
    })
    .await;
    assert!(rx.received().is_empty());
    subs.patch("s", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .expect("resume");
    assert_eq!(rx.wait_for(1, WAIT).await[0].header("ce-id"), "h1");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_yields_two_signatures_that_both_verify(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("rotation", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=";
    let new = "whsec_dXNlci1vd25lZC1zZWNyZXQtdGhhdC1tdXN0LXN0YXk=";
    env.kubectl(&["create", "secret", "generic", "keys", &format!("--from-literal=a-current={old}")]);
    env.create_active(WebhookSubscription::test("s", &rx.url).signed_with("keys")).await;
    h.publish_json(&env.namespace, event("one", "t")).await;
    let first = rx.wait_for(1, WAIT).await;
    assert_eq!(first[0].header("webhook-signature").split(' ').count(), 1);
    env.kubectl(&[
        "patch",
        "secret",
        "keys",
        "--type=merge",
        "-p",
        &json!({"stringData": {"b-next": new}}).to_string(),
    ]);
    // The key cache is refreshed within seconds; publish until a request carries both signatures.
    let both = wait_until("a delivery signed with both keys", WAIT, || async {
        h.publish_json(&env.namespace, event(&format!("two-{}", rx.received().len()), "t")).await;
        let got = rx.received();
        got.into_iter().find(|r| r.header("webhook-signature").split(' ').count() == 2)
    })
    .await;
    let parsed = verify_with_reference_libraries(&[old.to_string(), new.to_string()], &[both]);
    assert_eq!(parsed[0]["signatures"], 2);
}

/// Publish one event every 50 ms to `namespace` until `stop` is set; returns how many went out.
fn publish_until(ingest: String, namespace: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let url = format!("{ingest}/v1/namespaces/{namespace}/events");
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let body = event(&format!("flow-{sent}"), "t").to_string();
            let resp =
                http.post(&url).header("content-type", "application/cloudevents+json").body(body).send();
            assert_eq!(resp.await.expect("publish").status(), 202);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    })
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn within_a_small_status_budget_health_changes_go_first_and_counters_catch_up(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("status-budget", store).await;
    let mut flags = LOCAL.to_vec();
    flags.push("--status-writes-per-second=1");
    let h = env.start_hookline(&flags).await;
    // Sixteen busy subscriptions with one write per second between them: their counters lag, and
    // without priority a health change would wait its turn for about 16 s.
    let mut busy = Vec::new();
    for i in 0..16 {
        let rx = Receiver::start().await;
        env.create_active(WebhookSubscription::test(&format!("busy-{i}"), &rx.url)).await;
        busy.push(rx);
    }
    let flaky = Receiver::start().await;
    env.create_active(WebhookSubscription::test("flaky", &flaky.url).backoff("100ms", "200ms")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until(h.ingest.clone(), env.namespace.clone(), stop.clone());
    let subs: Api<WebhookSubscription> = env.api();
    let healthy = |sub: WebhookSubscription| {
        let c = sub.status?.conditions.into_iter().find(|c| c.type_ == "Healthy")?;
        Some((c.status, c.reason))
    };
    wait_until("flaky is Healthy while events flow", WAIT, || async {
        (healthy(subs.get("flaky").await.ok()?)? == ("True".into(), "Delivering".into())).then_some(())
    })
    .await;

    // The transition is written first, promptly, although every other subscription waits its turn.
    flaky.set_default(Reply::Status(500));
    // DeliveryFailing after three failures, CircuitOpen after ten (the breaker's default): the
    // ten may come before a write, and either is the transition.
    wait_until("Healthy=False within 10 s", Duration::from_secs(10), || async {
        let (status, reason) = healthy(subs.get("flaky").await.ok()?)?;
        (status == "False" && ["DeliveryFailing", "CircuitOpen"].contains(&reason.as_str())).then_some(())
    })
    .await;
    let deferred = h.metric("hookline_status_writes_deferred_total").await.expect("metric");
    assert!(deferred > 0.0, "the budget made busy subscriptions wait");

    // Once traffic stops, every subscription's counters converge on what its receiver got.
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher");
    for (i, rx) in busy.iter().enumerate() {
        rx.wait_for(published, WAIT).await;
        let name = format!("busy-{i}");
        wait_until(&format!("{name} counts {published} deliveries"), WAIT, || async {
            let stats = subs.get(&name).await.ok()?.status?.delivery_stats?;
            (stats.delivered == published as u64).then_some(())
        })
        .await;
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn status_writes_are_coalesced_under_load(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("coalescing", store).await;
    let flags: Vec<&str> = LOCAL
        .iter()
        .copied()
        .filter(|f| !f.starts_with("--status-interval"))
        .chain(["--status-interval=3s"])
        .collect();
    let h = env.start_hookline(&flags).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url)).await;
    let subs: Api<WebhookSubscription> = env.api();
    let rv_before = subs.get("s").await.expect("get").resource_version().expect("rv");
    let writes_before = h.metric("hookline_status_writes_total").await.expect("metric");
    let n = 200;
    let started = std::time::Instant::now();
    for chunk in 0..(n / 50) {
        let batch: Vec<Value> = (0..50).map(|i| event(&format!("c{chunk}-{i}"), "t")).collect();
        let (status, _) = h
            .publish(
                &env.namespace,
                &[("content-type", "application/cloudevents-batch+json")],
                json!(batch).to_string(),
                None,
            )
            .await;
        assert_eq!(status, 202);
    }
    rx.wait_for(n, WAIT).await;
    let sub = wait_until("status shows every delivery", WAIT, || async {
        let sub = subs.get("s").await.ok()?;
        (sub.status.as_ref()?.delivery_stats.as_ref()?.delivered == n as u64).then_some(sub)
    })
    .await;
    let writes = h.metric("hookline_status_writes_total").await.expect("metric") - writes_before;
    // At most one write per 3 s interval while deliveries flow (plus the final flush), however
    // many events: bounded by time, not by traffic.
    let bound = (started.elapsed().as_secs_f64() / 3.0).ceil() + 2.0;
    assert!(
        writes >= 1.0 && writes <= bound,
        "{n} deliveries in {:?} caused {writes} status writes (bound {bound})",
        started.elapsed()
    );
    assert!(writes < n as f64 / 10.0, "far fewer writes than events");
    assert_ne!(sub.resource_version().expect("rv"), rv_before);
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn test_events_are_sent_on_request_and_by_annotation(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("test-events", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url).for_types(&["never.matches"])).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/namespaces/{}/webhooksubscriptions/s/test", h.ingest, env.namespace))
        .send()
        .await
        .expect("test request");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(rx.wait_for(1, WAIT).await[0].header("ce-type"), "dev.hookline.test");
    env.kubectl(&["annotate", "whsub", "s", "hookline.dev/test-event=first"]);
    rx.wait_for(2, WAIT).await;
    env.kubectl(&["annotate", "whsub", "s", "example.com/unrelated=1"]);
    env.kubectl(&["annotate", "--overwrite", "whsub", "s", "hookline.dev/test-event=second"]);
    let got = rx.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "one test event per annotation value, not per reconcile");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn the_delivery_log_pages_newest_first(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("delivery-log", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    env.create_active(WebhookSubscription::test("s", &rx.url)).await;
    for i in 0..5 {
        h.publish_json(&env.namespace, event(&format!("l{i}"), "t")).await;
        rx.wait_for(i + 1, WAIT).await;
    }
    let ns = env.namespace.clone();
    wait_until("five log entries", WAIT, || async {
        (delivery_log(&h, &ns, "s", "").await["items"].as_array()?.len() == 5).then_some(())
    })
    .await;
    let page1 = delivery_log(&h, &ns, "s", "?limit=2").await;
    let ids = |p: &Value| {
        p["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["eventId"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page1), ["l4", "l3"]);
    let cursor = page1["nextCursor"].as_str().expect("cursor");
    let page2 = delivery_log(&h, &ns, "s", &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page2), ["l2", "l1"]);
    let page3 = delivery_log(
        &h,
        &ns,
        "s",
        &format!("?limit=2&cursor={}", page2["nextCursor"].as_str().expect("cursor")),
    )
    .await;
    assert_eq!(ids(&page3), ["l0"]);
    assert!(page3["nextCursor"].is_null());
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn cel_filters_pick_events_by_content_with_the_other_filters(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("cel-filter", store).await;
    let h = env.start_hookline(LOCAL).await;
    let ns = env.namespace.clone();
    let rx = Receiver::start().await;
    let big_eu = WebhookSubscription::test("big-eu", &rx.url)
        .for_types(&["order.*"])
        .filtered("/shop", "eu/")
        .cel(r#"event.data.amount > 100 && event.region == "eu" && event.data.items.exists(i, i.sku.matches("^tea-"))"#);
    env.create_active(big_eu).await;
    // Expressions that do not compile, or could cost too much, are named in the condition.
    for (name, expr, says) in [
        ("syntax", "event.data.amount >", "line 1, column"),
        ("squared", "event.data.items.map(i, i.sku).size() > 0", "map() and filter()"),
        ("nested", "event.data.a.all(x, event.data.b.exists(y, x == y))", "nested"),
    ] {
        let sub =
            env.create(WebhookSubscription::test(name, &rx.url).cel(expr), ("False", "InvalidSpec")).await;
        let ready =
            sub.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert!(
            ready.message.contains("spec.filter.cel") && ready.message.contains(says),
            "{name}: {}",
            ready.message
        );
    }
    // Longer than the schema allows: refused at apply.
    let long = WebhookSubscription::test("long", &rx.url).cel(&format!("{}true", "true && ".repeat(130)));
    let api: Api<WebhookSubscription> = env.api();
    let refused = api.create(&Default::default(), &long).await.expect_err("too long");
    assert!(refused.to_string().contains("spec.filter.cel"), "{refused}");

    let order = |id: &str, source: &str, subject: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": source, "type": "order.created", "subject": subject,
               "region": "eu", "data": data})
    };
    let tea = json!({"amount": 150.5, "items": [{"sku": "cup-1"}, {"sku": "tea-7"}]});
    let cases = [
        (order("match", "/shop", "eu/1", tea.clone()), 1),
        (order("small", "/shop", "eu/2", json!({"amount": 50, "items": [{"sku": "tea-1"}]})), 0),
        (order("no-tea", "/shop", "eu/3", json!({"amount": 500, "items": [{"sku": "cup-1"}]})), 0),
        (order("us", "/shop", "us/4", tea.clone()), 0),
        (order("elsewhere", "/other", "eu/5", tea.clone()), 0),
        // No amount (and nothing else false, which would decide `&&` alone): the filter fails on
        // it, which is no match, counted.
        (order("no-amount", "/shop", "eu/6", json!({"items": [{"sku": "tea-1"}]})), 0),
    ];
    for (event, matched) in cases {
        let answer = h.publish_json(&ns, event.clone()).await;
        assert_eq!(answer["events"][0]["matched"], matched, "{event}: {answer}");
    }
    assert_eq!(rx.wait_for(1, WAIT).await[0].header("ce-id"), "match");
    let errors = h.metric_sum("hookline_filter_errors_total").await;
    assert_eq!(errors, Some(1.0), "one event the filter failed on");

    // A changed expression applies to what is published next.
    let patch = json!({"spec": {"filter": {"cel": "event.data.amount < 100"}}});
    api.patch("big-eu", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    wait_until("the new expression applies", WAIT, || async {
        let small =
            order(&format!("small-{}", crate::support::free_port()), "/shop", "eu/7", json!({"amount": 5}));
        (h.publish_json(&ns, small).await["events"][0]["matched"] == 1).then_some(())
    })
    .await;
    assert_eq!(h.publish_json(&ns, order("big", "/shop", "eu/8", tea)).await["events"][0]["matched"], 0);
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_s_delivery_log_is_filtered_and_names_each_subscription_and_url(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("delivery-queries", store).await;
    let h = env.start_hookline(LOCAL).await;
    let (ok, failing) = (Receiver::start().await, Receiver::start().await);
    failing.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("a", &ok.url)).await;
    env.create_active(WebhookSubscription::test("b", &failing.url).for_types(&["order.*"]).failing_fast())
        .await;
    let ns = env.namespace.clone();
    h.publish_json(&ns, event("x1", "order.created")).await;
    h.publish_json(&ns, event("x2", "invoice.sent")).await;
    let get = |query: String| {
        let url = format!("{}/v1/namespaces/{ns}/deliveries{query}", h.ingest);
        async move {
            let resp = reqwest::get(url).await.expect("log request");
            (resp.status().as_u16(), resp.json::<Value>().await.expect("json"))
        }
    };
    // a delivers x1 and x2; b fails x1 twice (retry, then deadLettered).
    let all = wait_until("four attempts in the namespace's log", WAIT, || async {
        let (_, body) = get(String::new()).await;
        (body["items"].as_array()?.len() == 4).then_some(body)
    })
    .await;
    let rows = |body: &Value| -> Vec<(String, String, String)> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("subscription"), s("eventId"), s("outcome"))
            })
            .collect()
    };
    let r = |s: &str, id: &str, o: &str| (s.to_string(), id.to_string(), o.to_string());
    let mut every = rows(&all);
    every.sort();
    assert_eq!(
        every,
        [
            r("a", "x1", "delivered"),
            r("a", "x2", "delivered"),
            r("b", "x1", "deadLettered"),
            r("b", "x1", "retry")
        ]
    );
    for item in all["items"].as_array().expect("items") {
        let expected = if item["subscription"] == "a" { &ok.url } else { &failing.url };
        assert_eq!(item["url"].as_str(), Some(expected.as_str()), "{item}");
    }
    let times: Vec<&str> =
        all["items"].as_array().expect("items").iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");

    let only = |q: &str| {
        let q = q.to_string();
        async { rows(&get(q).await.1) }
    };
    let sorted = |mut v: Vec<(String, String, String)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(only("?outcome=delivered").await),
        [r("a", "x1", "delivered"), r("a", "x2", "delivered")]
    );
    assert_eq!(sorted(only("?outcome=failed").await), [r("b", "x1", "deadLettered"), r("b", "x1", "retry")]);
    assert_eq!(only("?outcome=deadLettered").await, [r("b", "x1", "deadLettered")]);
    assert_eq!(only("?eventType=invoice.sent").await, [r("a", "x2", "delivered")]);
    assert_eq!(only("?eventId=x1").await.len(), 3);
    assert_eq!(only("?eventId=x1&subscription=a").await, [r("a", "x1", "delivered")]);
    assert_eq!(only("?subscription=b&outcome=retry").await, [r("b", "x1", "retry")]);
    assert_eq!(only("?since=2099-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(only("?until=2001-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(only("?since=2001-01-01T00:00:00Z&until=2099-01-01T00:00:00Z").await.len(), 4);
    // Pages of two, with a filter kept across pages.
    let (_, page1) = get("?limit=1&outcome=failed".into()).await;
    let cursor = page1["nextCursor"].as_str().expect("a next page");
    let (_, page2) = get(format!("?limit=1&outcome=failed&cursor={cursor}")).await;
    assert_eq!(
        sorted([rows(&page1), rows(&page2)].concat()),
        [r("b", "x1", "deadLettered"), r("b", "x1", "retry")]
    );
    // The cluster-wide log holds the same attempts, each naming its namespace.
    let cluster = |q: &str| {
        let url = format!("{}/v1/deliveries{q}", h.ingest);
        async move { reqwest::get(url).await.expect("cluster-wide log").json::<Value>().await.expect("json") }
    };
    let everywhere = cluster("").await;
    assert_eq!(sorted(rows(&everywhere)), every);
    let namespaces = everywhere["items"].as_array().expect("items").iter().map(|e| e["namespace"].clone());
    assert!(namespaces.clone().all(|n| n == ns.as_str()), "{everywhere}");
    assert_eq!(
        sorted(rows(&cluster(&format!("?namespace={ns}&outcome=failed")).await)),
        [r("b", "x1", "deadLettered"), r("b", "x1", "retry")]
    );
    assert_eq!(
        rows(&cluster(&format!("?namespace={ns}&subscription=a&eventId=x2")).await),
        [r("a", "x2", "delivered")]
    );
    assert_eq!(rows(&cluster(&format!("?namespace={ns}-elsewhere")).await), []);

    // The subscription's own log takes the same filters.
    let own =
        format!("{}/v1/namespaces/{ns}/webhooksubscriptions/b/deliveries?outcome=deadLettered", h.ingest);
    let own: Value = reqwest::get(own).await.expect("own log").json().await.expect("json");
    assert_eq!(rows(&own), [r("b", "x1", "deadLettered")]);

    // Bad filters are refused, naming the parameter.
    for (query, names) in [
        ("?outcome=lost", "outcome"),
        ("?since=yesterday", "since"),
        ("?until=2026-13-01T00:00:00Z", "until"),
        ("?colour=red", "colour"),
        ("?cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("?eventType=", "eventType"),
        ("?subscription=nope", "nope"),
    ] {
        let (status, body) = get(query.to_string()).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert!((400..=404).contains(&status) && error.contains(names), "{query}: {status} {body}");
    }
    let twice = format!("{}/v1/namespaces/{ns}/webhooksubscriptions/b/deliveries?subscription=a", h.ingest);
    assert_eq!(reqwest::get(twice).await.expect("request").status().as_u16(), 400);
}
