//! Dead letters: undeliverable events become FailedEvents users list, read, replay and delete.

use std::time::{Duration, Instant};

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{Backend, Hookline, LOCAL, POSTGRES, SQLITE, TestEnv, wait_until};
use hookline::api::{FailedEvent, WebhookSubscription};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(45);

/// Hookline started with `flags`, and subscription `s` (two fast attempts) to a receiver that
/// answers 500 to everything.
async fn failing_subscription(env: &TestEnv, flags: &[&str]) -> (Hookline, Receiver) {
    let h = env.start_hookline(flags).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("s", &rx.url).failing_fast()).await;
    (h, rx)
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.created", "data": {"order": id, "items": [1, 2]}})
}

async fn failed_events(env: &TestEnv, n: usize) -> Vec<FailedEvent> {
    let api: Api<FailedEvent> = env.api();
    wait_until(&format!("{n} FailedEvents"), WAIT, || async {
        let list = api.list(&ListParams::default()).await.ok()?.items;
        (list.len() == n).then_some(list)
    })
    .await
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_yields_exactly_one_failed_event_per_event(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("dead-letter-500", store).await;
    let (h, rx) = failing_subscription(&env, LOCAL).await;
    for id in ["a", "b"] {
        h.publish_json(&env.namespace, event(id)).await;
    }
    let fevs = failed_events(&env, 2).await;
    for fev in &fevs {
        let f = &fev.spec.failure;
        assert_eq!(
            (serde_json::to_value(f.reason).expect("json"), f.attempts, f.last_status_code),
            (json!("MaxAttemptsExceeded"), 2, Some(500))
        );
        assert!(f.first_attempt_time.is_some() && f.last_attempt_time.is_some());
        assert_eq!(fev.labels()["hookline.dev/subscription"], "s");
        assert_eq!(fev.labels()["hookline.dev/event-type"], "order.created");
        assert_eq!(fev.owner_references()[0].kind, "WebhookSubscription");
        assert_eq!(fev.spec.subscription, "s");
    }
    // The payload comes back unchanged through kubectl.
    let name = fevs.iter().find(|f| f.spec.event.id == "a").expect("fev for a").name_any();
    let data = env.kubectl(&["get", "fev", &name, "-o", "jsonpath={.spec.event.data}"]);
    assert_eq!(serde_json::from_str::<Value>(&data).expect("json"), json!({"order": "a", "items": [1, 2]}));
    let columns = env.kubectl(&["get", "fev", &name]);
    assert!(columns.contains("MaxAttemptsExceeded") && columns.contains("order.created"), "{columns}");
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("status counts the dead letters", WAIT, || async {
        let st = subs.get("s").await.ok()?.status?;
        (st.dead_letters?.count == 2 && st.delivery_stats?.dead_lettered == 2).then_some(())
    })
    .await;
    assert_eq!(rx.received().len(), 4, "two attempts per event, no more");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn bad_request_and_unreachable_endpoints_are_dead_lettered_with_their_reason(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("dead-letter-reasons", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(400));
    env.create_active(WebhookSubscription::test("bad-request", &rx.url).for_types(&["order.*"])).await;
    let closed = format!("http://127.0.0.1:{}/nothing-listens", crate::support::free_port());
    env.create_active(WebhookSubscription::test("refused", &closed).for_types(&["order.*"]).failing_fast())
        .await;
    h.publish_json(&env.namespace, event("x")).await;
    let fevs = failed_events(&env, 2).await;
    let by = |sub: &str| fevs.iter().find(|f| f.spec.subscription == sub).expect("fev").spec.failure.clone();
    let bad = by("bad-request");
    assert_eq!(
        (serde_json::to_value(bad.reason).expect("json"), bad.attempts, bad.last_status_code),
        (json!("NonRetryableResponse"), 1, Some(400))
    );
    let refused = by("refused");
    assert_eq!(refused.attempts, 2);
    assert!(refused.last_error.as_deref().unwrap_or("").contains("connection"), "{refused:?}");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn replay_redelivers_and_deletes_and_a_failed_replay_says_so(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("replay", store).await;
    let (h, rx) = failing_subscription(&env, LOCAL).await;
    for id in ["r1", "r2", "r3"] {
        h.publish_json(&env.namespace, event(id)).await;
    }
    let fevs = failed_events(&env, 3).await;
    let one = fevs.iter().find(|f| f.spec.event.id == "r1").expect("r1").name_any();

    // Still failing: the replay fails, the FailedEvent stays and says why.
    env.kubectl(&["annotate", "fev", &one, "hookline.dev/replay=true"]);
    let api: Api<FailedEvent> = env.api();
    let fev = wait_until("the failed replay is recorded", WAIT, || async {
        let fev = api.get(&one).await.ok()?;
        let outcome = serde_json::to_value(fev.status.as_ref()?.replay.as_ref()?.outcome).ok()?;
        (outcome == json!("Failed")).then_some(fev)
    })
    .await;
    assert!(!fev.annotations().contains_key("hookline.dev/replay"), "the request was taken");

    // Recovered: one replay delivers and deletes; then all the rest at once by label.
    rx.set_default(Reply::Status(200));
    let before = rx.received().len();
    env.kubectl(&["annotate", "fev", &one, "hookline.dev/replay=true"]);
    wait_until("the replayed FailedEvent is deleted", WAIT, || async {
        api.get_opt(&one).await.ok()?.is_none().then_some(())
    })
    .await;
    let replayed: Vec<_> = rx.received().into_iter().skip(before).collect();
    assert_eq!(
        replayed.iter().map(|r| r.header("webhook-id")).collect::<Vec<_>>(),
        ["r1"],
        "same webhook-id"
    );
    env.kubectl(&["annotate", "fev", "-l", "hookline.dev/subscription=s", "hookline.dev/replay=true"]);
    failed_events(&env, 0).await;
    let ids: std::collections::BTreeSet<String> =
        rx.received().iter().skip(before).map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["r1", "r2", "r3"]);
}

/// Right after a start the registry does not hold every subscription yet: a replay request
/// waiting then must wait for it, not be answered SubscriptionGone (and used up).
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_requested_while_hookline_is_down_runs_when_it_is_back(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("replay-restart", store).await;
    let data = env.new_store().await;
    let h = env.start_hookline_in(&data, LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("s", &rx.url).failing_fast()).await;
    h.publish_json(&env.namespace, event("d1")).await;
    let one = failed_events(&env, 1).await[0].name_any();
    h.kill().await;
    rx.set_default(Reply::Status(200));
    env.kubectl(&["annotate", "fev", &one, "hookline.dev/replay=true"]);
    let _h = env.start_hookline_in(&data, LOCAL).await;
    let api: Api<FailedEvent> = env.api();
    wait_until("the replay delivers and deletes the FailedEvent", WAIT, || async {
        let fev = api.get_opt(&one).await.ok()?;
        let outcome = fev.and_then(|f| f.status?.replay).map(|r| r.outcome);
        assert_ne!(
            outcome.map(|o| serde_json::to_value(o).expect("outcome")),
            Some(json!("SubscriptionGone")),
            "the subscription exists"
        );
        api.get_opt(&one).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(rx.received().iter().any(|r| r.header("webhook-id") == "d1"), "the replay was delivered");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn the_cap_drops_and_counts(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("dead-letter-cap", store).await;
    let mut flags = LOCAL.to_vec();
    flags.push("--failed-event-cap=2");
    let (h, _rx) = failing_subscription(&env, &flags).await;
    for id in ["c1", "c2", "c3", "c4"] {
        h.publish_json(&env.namespace, event(id)).await;
    }
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("two kept, two dropped", WAIT, || async {
        let dl = subs.get("s").await.ok()?.status?.dead_letters?;
        (dl.count == 2 && dl.dropped == 2).then_some(())
    })
    .await;
    assert_eq!(failed_events(&env, 2).await.len(), 2);
    let events = env.kubectl(&["get", "events", "--field-selector=reason=DeadLetterDropped", "-o", "name"]);
    assert!(!events.trim().is_empty(), "a Warning Event says dead letters were dropped");
}

// Separate from the cap test: a short TTL there could expire a FailedEvent before the cap is
// reached on a slow machine, and the cap would (rightly) not drop.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn the_ttl_deletes_failed_events(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("dead-letter-ttl", store).await;
    let mut flags = LOCAL.to_vec();
    flags.push("--failed-event-ttl=6s");
    let (h, _rx) = failing_subscription(&env, &flags).await;
    h.publish_json(&env.namespace, event("t1")).await;
    failed_events(&env, 1).await;
    failed_events(&env, 0).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn dead_lettering_off_drops_and_counts(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("dead-letter-off", store).await;
    let h = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("s", &rx.url).failing_fast().without_dead_letters()).await;
    h.publish_json(&env.namespace, event("d1")).await;
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("the drop is counted", WAIT, || async {
        (subs.get("s").await.ok()?.status?.dead_letters?.dropped == 1).then_some(())
    })
    .await;
    assert!(env.api::<FailedEvent>().list(&ListParams::default()).await.expect("list").items.is_empty());
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_right_after_the_last_attempt_still_yields_one_failed_event(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("dead-letter-kill", store).await;
    let data = env.new_store().await;
    let h = env.start_hookline_in(&data, LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("s", &rx.url).failing_fast()).await;
    h.publish_json(&env.namespace, event("k1")).await;
    rx.wait_for(2, WAIT).await;
    h.kill().await;
    let _h = env.start_hookline_in(&data, LOCAL).await;
    let fevs = failed_events(&env, 1).await;
    assert_eq!(fevs[0].spec.event.id, "k1");
    // Give a duplicate every chance to appear: the outbox is drained every 2 s.
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("status has counted the FailedEvent", WAIT, || async {
        (subs.get("s").await.ok()?.status?.dead_letters?.count == 1).then_some(())
    })
    .await;
    assert_eq!(env.api::<FailedEvent>().list(&ListParams::default()).await.expect("list").items.len(), 1);
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_subscription_garbage_collects_its_failed_events(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("dead-letter-gc", store).await;
    let (h, _rx) = failing_subscription(&env, LOCAL).await;
    h.publish_json(&env.namespace, event("g1")).await;
    let failed = failed_events(&env, 1).await;
    // What Hookline controls: the FailedEvent's controller is its subscription.
    let owner = failed[0].owner_references().iter().find(|o| o.controller == Some(true)).cloned();
    assert_eq!(owner.map(|o| (o.kind, o.name)), Some(("WebhookSubscription".into(), "s".into())));
    env.api::<WebhookSubscription>().delete("s", &DeleteParams::default()).await.expect("delete");
    // The control plane's garbage collector does the rest. Under load the test control plane's
    // collector has missed a dependent (seen twice in full runs, never alone); one that is still
    // there after 30 s is touched, which makes the collector look at it and its owner again.
    let api: Api<FailedEvent> = env.api();
    let (deadline, mut touch_at) = (Instant::now() + Duration::from_secs(150), Instant::now() + TOUCH_AFTER);
    let mut touches = 0;
    while !api.list(&ListParams::default()).await.is_ok_and(|l| l.items.is_empty()) {
        assert!(Instant::now() < deadline, "the garbage collector never deleted the FailedEvent");
        if Instant::now() >= touch_at {
            touches += 1;
            let touched = format!("example.com/touched={touches}");
            env.kubectl(&["annotate", "failedevents", "--all", &touched, "--overwrite"]);
            touch_at += TOUCH_AFTER;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the garbage collector gets before a dependent it should delete is touched.
const TOUCH_AFTER: Duration = Duration::from_secs(30);
