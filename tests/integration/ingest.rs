//! Publishing: who may publish where (RBAC through TokenReview and SubjectAccessReview), bad input
//! refused with a named problem, and accepted events surviving restarts.

use std::time::Duration;

use crate::support::receiver::{Receiver, Reply};
use crate::support::{Backend, POSTGRES, SQLITE, TestEnv, wait_until};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use rstest::rstest;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn event(id: &str) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t"}).to_string()
}

const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");

type Case = (&'static str, Vec<(&'static str, &'static str)>, String, u16, &'static str);

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn rbac_decides_who_may_publish_where(#[values(SQLITE, POSTGRES)] store: Backend) {
    let env = TestEnv::with_crds_on("ingest-rbac", store).await;
    let h = env.start_hookline(&[]).await;
    let ns = env.namespace.clone();
    env.kubectl(&["create", "serviceaccount", "producer"]);
    let token = env.kubectl(&["create", "token", "producer"]).trim().to_string();

    let (status, body) = h.publish(&ns, &[STRUCTURED], event("a"), None).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = h.publish(&ns, &[STRUCTURED], event("a"), Some("not-a-token")).await;
    assert_eq!(status, 401, "a token the API server does not know");
    let (status, body) = h.publish(&ns, &[STRUCTURED], event("a"), Some(&token)).await;
    assert_eq!(status, 403, "no RBAC yet: {body}");
    assert!(body["error"].as_str().unwrap_or("").contains("may not create events.hookline.dev"), "{body}");

    env.allow_publishing("producer");
    // Decisions are cached for a few seconds: poll until the new Role counts.
    wait_until("the Role allows publishing", WAIT, || async {
        let (status, _) = h.publish(&ns, &[STRUCTURED], event("a"), Some(&token)).await;
        (status == 202).then_some(())
    })
    .await;

    // Publishing is all the Role allows: not reading the namespace's delivery log.
    let log = reqwest::Client::new()
        .get(format!("{}/v1/namespaces/{ns}/deliveries", h.ingest))
        .bearer_auth(&token)
        .send()
        .await
        .expect("log request");
    assert_eq!(log.status().as_u16(), 403);
    let body: serde_json::Value = log.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("may not list webhooksubscriptions.hookline.dev"),
        "{body}"
    );

    // The same token is still refused in another namespace.
    let other = format!("{ns}-b");
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let meta = ObjectMeta { name: Some(other.clone()), ..Default::default() };
    namespaces
        .create(&PostParams::default(), &Namespace { metadata: meta, ..Default::default() })
        .await
        .expect("ns b");
    let (status, _) = h.publish(&other, &[STRUCTURED], event("b"), Some(&token)).await;
    namespaces.delete(&other, &DeleteParams::default()).await.expect("delete ns b");
    assert_eq!(status, 403, "allowed in {ns} only");
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn bad_publishes_are_refused_with_the_problem_named_and_nothing_stored(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("ingest-bad-input", store).await;
    let h = env.start_hookline(&["--ingest-auth=none", "--max-event-bytes=2048"]).await;
    let ns = env.namespace.clone();
    // (what, headers, body, expected status, attribute named in the answer)
    let cases: Vec<Case> = vec![
        ("invalid JSON", vec![STRUCTURED], "{".into(), 400, "body"),
        (
            "missing id",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#.into(),
            400,
            "id",
        ),
        (
            "missing source",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","type":"t"}"#.into(),
            400,
            "source",
        ),
        (
            "missing type",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","source":"/s"}"#.into(),
            400,
            "type",
        ),
        (
            "wrong specversion",
            vec![STRUCTURED],
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#.into(),
            400,
            "specversion",
        ),
        (
            "id of the wrong type",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#.into(),
            400,
            "id",
        ),
        (
            "bad time",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"noon"}"#.into(),
            400,
            "time",
        ),
        (
            "bad batch entry",
            vec![("content-type", "application/cloudevents-batch+json")],
            format!("[{},{}]", event("ok"), r#"{"specversion":"1.0","source":"/s","type":"t"}"#),
            400,
            "batch[1].id",
        ),
        (
            "batch not an array",
            vec![("content-type", "application/cloudevents-batch+json")],
            event("x"),
            400,
            "body",
        ),
        (
            "binary without id",
            vec![("ce-specversion", "1.0"), ("ce-source", "/s"), ("ce-type", "t")],
            "{}".into(),
            400,
            "ce-id",
        ),
        (
            "oversized",
            vec![STRUCTURED],
            json!({"specversion":"1.0","id":"big","source":"/s","type":"t","data":"x".repeat(4096)})
                .to_string(),
            413,
            "",
        ),
        ("wrong content type", vec![("content-type", "text/plain")], "hello".into(), 415, ""),
        (
            "binary with the wrong specversion",
            vec![("ce-specversion", "0.3"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")],
            "{}".into(),
            400,
            "ce-specversion",
        ),
        (
            "binary with a bad time",
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-time", "noon"),
            ],
            "{}".into(),
            400,
            "ce-time",
        ),
        (
            "binary oversized",
            vec![("ce-specversion", "1.0"), ("ce-id", "big"), ("ce-source", "/s"), ("ce-type", "t")],
            "x".repeat(4096),
            413,
            "",
        ),
        ("not an object", vec![STRUCTURED], "[1]".into(), 400, "body"),
        (
            "an extension of the wrong type",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","region":{"eu":1}}"#.into(),
            400,
            "region",
        ),
        (
            "data and data_base64 together",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#.into(),
            400,
            "data",
        ),
        (
            "invalid base64",
            vec![STRUCTURED],
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"***"}"#.into(),
            400,
            "data_base64",
        ),
        (
            "empty batch",
            vec![("content-type", "application/cloudevents-batch+json")],
            "[]".into(),
            400,
            "body",
        ),
        (
            "oversized batch entry",
            vec![("content-type", "application/cloudevents-batch+json")],
            format!(
                "[{}]",
                json!({"specversion":"1.0","id":"big","source":"/s","type":"t","data":"x".repeat(4096)})
            ),
            413,
            "batch[0]",
        ),
    ];
    assert!(cases.len() >= 20, "the issue asks for at least 20 malformed publishes");
    for (what, headers, body, want, attribute) in cases {
        let (status, json) = h.publish(&ns, &headers, body, None).await;
        assert_eq!(status, want, "{what}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: the error is explained: {json}"
        );
        if !attribute.is_empty() {
            assert_eq!(json["attribute"], attribute, "{what}: {json}");
        }
    }
    // Headers beyond the HTTP server's limit are refused before any handler runs.
    let huge = "x".repeat(512 * 1024);
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-subject", huge.as_str()),
    ];
    let (status, _) = h.publish(&ns, &headers, "{}", None).await;
    assert!((400..500).contains(&status), "huge headers: {status}");
    let (status, json) = h.publish("Not_A_Namespace", &[STRUCTURED], event("n"), None).await;
    assert_eq!(status, 400, "{json}");
    let (status, json) = h.publish("no-such-namespace-here", &[STRUCTURED], event("n"), None).await;
    assert_eq!(status, 404, "{json}");
    // Nothing was stored: the ids of the refused requests are new to the store.
    for id in ["1", "ok", "big"] {
        let (status, json) = h.publish(&ns, &[STRUCTURED], event(id), None).await;
        assert_eq!((status, json["events"][0]["duplicate"].as_bool()), (202, Some(false)), "{id}: {json}");
    }
    let (_, json) = h.publish(&ns, &[STRUCTURED], event("ok"), None).await;
    assert_eq!(json["events"][0]["duplicate"], true, "a re-publish of an accepted event is a duplicate");
}

async fn survive(kill: bool, store: Backend) {
    let test = if kill { "restart-kill" } else { "restart-term" };
    let env = TestEnv::with_crds_on(test, store).await;
    let flags =
        ["--ingest-auth=none", "--allow-http", "--allow-cidr=127.0.0.0/8", "--allow-unverified-endpoints"];
    let data = env.new_store().await;
    let h = env.start_hookline_in(&data, &flags).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(503));
    env.apply(&format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: s}}\nspec:\n  eventTypes: ['*']\n  endpoint: {{url: '{}'}}\n  validation: {{method: None}}\n  retryPolicy: {{initialBackoff: 300ms, maxBackoff: 1s}}\n",
            rx.url
        ),
    );
    env.kubectl(&["wait", "--for=condition=Ready", "whsub/s", "--timeout=30s"]);
    let ids: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    for chunk in ids.chunks(10) {
        let batch = format!("[{}]", chunk.iter().map(|id| event(id)).collect::<Vec<_>>().join(","));
        let (status, json) = h
            .publish(&env.namespace, &[("content-type", "application/cloudevents-batch+json")], batch, None)
            .await;
        assert_eq!(status, 202, "{json}");
    }
    rx.wait_for(5, WAIT).await;
    if kill {
        h.kill().await;
    } else {
        assert!(h.terminate().await, "a graceful stop exits 0");
    }
    rx.set_default(Reply::Status(200));
    let _h = env.start_hookline_in(&data, &flags).await;
    wait_until("every accepted event is delivered after the restart", Duration::from_secs(60), || async {
        let ok: std::collections::HashSet<String> =
            rx.received().iter().map(|r| r.header("webhook-id")).collect();
        ids.iter().all(|id| ok.contains(id)).then_some(())
    })
    .await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_survive_kill_9(#[values(SQLITE, POSTGRES)] store: Backend) {
    survive(true, store).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_survive_a_graceful_restart(#[values(SQLITE, POSTGRES)] store: Backend) {
    survive(false, store).await;
}

/// A ClusterRole letting ServiceAccount `account` of the test's namespace list
/// webhooksubscriptions in all namespaces, deleted when dropped (the namespace's deletion
/// does not take cluster-wide objects along).
struct ListsEverywhere {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl ListsEverywhere {
    fn grant(env: &TestEnv, account: &str) -> Self {
        let name = format!("{}-list-everywhere", env.namespace);
        env.apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {name}}}\nrules:\n- apiGroups: [hookline.dev]\n  resources: [webhooksubscriptions]\n  verbs: [list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}}}\nsubjects:\n- {{kind: ServiceAccount, name: {account}, namespace: {}}}\n",
            env.namespace
        ));
        ListsEverywhere { name, kubeconfig: env.kubeconfig.clone() }
    }
}

impl Drop for ListsEverywhere {
    fn drop(&mut self) {
        for kind in ["clusterrolebinding", "clusterrole"] {
            let _ = std::process::Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .args(["delete", kind, &self.name, "--ignore-not-found"])
                .output();
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn only_who_may_list_subscriptions_everywhere_reads_the_cluster_wide_log(
    #[values(SQLITE, POSTGRES)] store: Backend,
) {
    let env = TestEnv::with_crds_on("ingest-cluster-log", store).await;
    let h = env.start_hookline(&[]).await;
    let ns = env.namespace.clone();
    for account in ["team", "admin"] {
        env.kubectl(&["create", "serviceaccount", account]);
    }
    // The team may list the subscriptions of its own namespace only.
    env.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: list-subscriptions}}\nrules:\n- apiGroups: [hookline.dev]\n  resources: [webhooksubscriptions]\n  verbs: [list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: list-subscriptions}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: list-subscriptions}}\nsubjects:\n- {{kind: ServiceAccount, name: team, namespace: {ns}}}\n"
    ));
    let _admin = ListsEverywhere::grant(&env, "admin");
    let token = |account: &str| env.kubectl(&["create", "token", account]).trim().to_string();
    let (team, admin) = (token("team"), token("admin"));
    let get = |path: String, token: String| fetch(format!("{}{path}", h.ingest), token);
    // RBAC decisions are cached for a few seconds: poll until the new bindings count.
    wait_until("the team reads its namespace's log", WAIT, || async {
        (get(format!("/v1/namespaces/{ns}/deliveries"), team.clone()).await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = get("/v1/deliveries".into(), team.clone()).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("may not list webhooksubscriptions.hookline.dev in all namespaces"), "{body}");
    let (status, body) = get(format!("/v1/deliveries?namespace={ns}"), team.clone()).await;
    assert_eq!(status, 403, "naming its own namespace does not make the cluster-wide log the team's: {body}");
    wait_until("the administrator reads the cluster-wide log", WAIT, || async {
        let (status, body) = get(format!("/v1/deliveries?namespace={ns}"), admin.clone()).await;
        (status == 200 && body["items"].is_array()).then_some(())
    })
    .await;
    let (status, _) = get("/v1/deliveries".into(), String::new()).await;
    assert_eq!(status, 401, "no token");
}

async fn fetch(url: String, token: String) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new().get(url).bearer_auth(token).send().await.expect("log request");
    (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap_or_default())
}
