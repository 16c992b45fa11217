//! The Helm chart: lint, render, dry-run against the API server, install/upgrade/uninstall, and
//! its RBAC proven sufficient (a real Hookline runs as the chart's ServiceAccount) and not excessive.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::receiver::{Receiver, Reply};
use crate::support::{TestEnv, install_crds, wait_until};
use hookline::api::{FailedEvent, WebhookSubscription};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hookline");
const POSTGRES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hookline/ci/postgres-values.yaml");
const ALL_FEATURES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hookline/ci/all-features-values.yaml");

fn helm(env: &TestEnv, args: &[&str]) -> String {
    crate::support::hack("helm.sh", args, &[("KUBECONFIG", env.kubeconfig.as_os_str())])
}

fn kubectl_stdin(env: &TestEnv, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["--namespace", &env.namespace])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    crate::support::blocking(|| child.wait_with_output()).expect("kubectl output")
}

/// A ServiceMonitor CRD stand-in, so the optional ServiceMonitor can be dry-run here.
const SERVICE_MONITOR_CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
 "metadata":{"name":"servicemonitors.monitoring.coreos.com"},
 "spec":{"group":"monitoring.coreos.com","scope":"Namespaced",
  "names":{"kind":"ServiceMonitor","plural":"servicemonitors","singular":"servicemonitor"},
  "versions":[{"name":"v1","served":true,"storage":true,
   "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;
const PROMETHEUS_RULE_CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
 "metadata":{"name":"prometheusrules.monitoring.coreos.com"},
 "spec":{"group":"monitoring.coreos.com","scope":"Namespaced",
  "names":{"kind":"PrometheusRule","plural":"prometheusrules","singular":"prometheusrule"},
  "versions":[{"name":"v1","served":true,"storage":true,
   "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_lints_renders_and_passes_a_server_dry_run() {
    let env = TestEnv::start("chart-render").await;
    install_crds(&env.client).await;
    for crd in [SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD] {
        let _ = kubectl_stdin(&env, &["apply", "-f", "-"], crd);
    }
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=30s",
    ]);
    crate::support::wait_until_served(
        &env.client,
        "monitoring.coreos.com/v1",
        &["servicemonitors", "prometheusrules"],
    )
    .await;
    helm(&env, &["lint", "--strict", CHART]);
    helm(&env, &["lint", "--strict", CHART, "-f", ALL_FEATURES]);
    helm(&env, &["lint", "--strict", CHART, "-f", POSTGRES]);
    for values in [None, Some(ALL_FEATURES), Some(POSTGRES)] {
        // --validate: render against the server's API versions (the 1.20 test server has no
        // policy/v1, so the PodDisruptionBudget must come out as policy/v1beta1). --skip-tests:
        // the helm test's Pod names a ServiceAccount that a dry run never creates (tests/integration/node.rs
        // runs that test for real).
        let mut args =
            vec!["template", "hl", CHART, "--validate", "--skip-tests", "--namespace", &env.namespace];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let rendered = helm(&env, &args);
        let out = kubectl_stdin(&env, &["apply", "--dry-run=server", "-f", "-"], &rendered);
        assert!(
            out.status.success(),
            "server dry-run ({values:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_rbac_is_minimal(&rendered);
        assert_namespaced_objects_land_in(&rendered, &env.namespace);
        let image = rendered.lines().find_map(|l| l.trim().strip_prefix("image: ")).expect("an image");
        assert_eq!(
            image.ends_with("@sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\""),
            values == Some(ALL_FEATURES),
            "pulled by digest exactly when image.digest is set: {image}"
        );
    }
    // The chart ships exactly the generated CRDs.
    let shipped = std::fs::read_to_string(format!("{CHART}/crds/hookline.dev.yaml")).expect("chart CRDs");
    assert_eq!(
        shipped,
        hookline::api::crds_yaml().expect("crds"),
        "charts/hookline/crds is stale: copy crds/ there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_values_schema_refuses_several_replicas_on_sqlite_and_postgres_without_a_secret() {
    for (set, problem) in [
        ("replicaCount=2", "replicaCount: Must be less than or equal to 1"),
        ("store.type=postgres", "store.postgres.existingSecret"),
    ] {
        let out = crate::support::blocking(|| {
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/helm.sh"))
                .args(["template", "hl", CHART, "--set", set])
                .output()
        })
        .expect("helm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(problem), "--set {set}: {stderr}");
    }
}

/// No wildcard anywhere, and Secrets only as the code uses them.
/// `helm template | kubectl apply` puts every namespaced object in the release's namespace,
/// whatever namespace kubectl's context has.
fn assert_namespaced_objects_land_in(rendered: &str, namespace: &str) {
    const CLUSTER_SCOPED: [&str; 2] = ["ClusterRole", "ClusterRoleBinding"];
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let object = serde_yaml::Value::deserialize(doc).expect("rendered YAML");
        let Some(kind) = object["kind"].as_str() else { continue };
        if CLUSTER_SCOPED.contains(&kind) {
            continue;
        }
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            Some(namespace),
            "{kind} {:?} names its namespace",
            object["metadata"]["name"]
        );
    }
}

fn assert_rbac_is_minimal(rendered: &str) {
    for doc in rendered.split("\n---") {
        let Ok(obj) = serde_yaml::from_str::<serde_json::Value>(doc) else { continue };
        if !matches!(obj["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        for rule in obj["rules"].as_array().cloned().unwrap_or_default() {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().cloned().unwrap_or_default();
                assert!(!values.iter().any(|v| v == "*"), "wildcard in {}: {rule}", obj["metadata"]["name"]);
            }
            if rule["resources"].as_array().is_some_and(|r| r.iter().any(|v| v == "secrets")) {
                let verbs: Vec<&str> =
                    rule["verbs"].as_array().expect("verbs").iter().filter_map(|v| v.as_str()).collect();
                assert!(
                    verbs.iter().all(|v| ["get", "list", "watch", "create"].contains(v)),
                    "secrets verbs: {verbs:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_upgrade_and_uninstall_produce_the_expected_objects() {
    let env = TestEnv::start("chart-lifecycle").await;
    install_crds(&env.client).await;
    let release = format!("hl{}", &env.namespace[env.namespace.len() - 8..]);
    let ns = env.namespace.clone();
    helm(&env, &["install", &release, CHART, "--namespace", &ns, "--skip-crds", "--wait=false"]);
    let deploys: Api<Deployment> = env.api();
    let name = format!("{release}-hookline");
    let d = deploys.get(&name).await.expect("deployment");
    let pod = d.spec.expect("spec").template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let sc = container.security_context.clone().expect("container securityContext");
    assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
    assert_eq!(sc.capabilities.expect("caps").drop, Some(vec!["ALL".to_string()]));
    let psc = pod.security_context.expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.expect("seccomp").type_, "RuntimeDefault");
    assert_eq!(
        container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.path.clone()),
        Some(Some("/readyz".into()))
    );
    assert!(
        env.api::<PersistentVolumeClaim>().get_opt(&format!("{name}-data")).await.expect("pvc").is_some()
    );
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    assert!(roles.get_opt(&name).await.expect("clusterrole").is_some(), "cluster-wide by default");

    helm(
        &env,
        &[
            "upgrade",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--skip-crds",
            "--set",
            &format!("watchNamespace={ns}"),
            "--set",
            "persistence.enabled=false",
        ],
    );
    assert!(
        env.api::<Role>().get_opt(&name).await.expect("role").is_some(),
        "limited to one namespace: a Role"
    );
    assert!(roles.get_opt(&name).await.expect("clusterrole").is_none(), "and no cluster-wide role");
    let d = deploys.get(&name).await.expect("deployment");
    let volumes = d.spec.expect("spec").template.spec.expect("pod").volumes.expect("volumes");
    assert!(
        volumes.iter().any(|v| v.name == "data" && v.empty_dir.is_some()),
        "emptyDir when persistence is off"
    );

    helm(&env, &["uninstall", &release, "--namespace", &ns]);
    assert!(deploys.get_opt(&name).await.expect("get").is_none());
    assert!(roles.get_opt(&format!("{name}-auth")).await.expect("get").is_none());
    assert!(
        env.api::<PersistentVolumeClaim>().get_opt(&format!("{name}-data")).await.expect("pvc").is_some(),
        "the event store's volume is kept on uninstall"
    );
}

// Multi-threaded: the receivers must answer the handshake while `kubectl wait` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_is_enough_to_deliver_and_dead_letter() {
    let env = TestEnv::start("chart-rbac").await;
    install_crds(&env.client).await;
    let release = format!("hl{}", &env.namespace[env.namespace.len() - 8..]);
    let ns = env.namespace.clone();
    helm(
        &env,
        &[
            "install",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--skip-crds",
            "--set",
            "persistence.enabled=false",
        ],
    );
    let sa = format!("{release}-hookline");
    let token = env.kubectl(&["create", "token", &sa, "--duration=1h"]).trim().to_string();
    // A kubeconfig for the chart's ServiceAccount: same server, its token instead of the admin's.
    let mut kc = Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    kc.auth_infos[0].auth_info.as_mut().expect("auth").token = Some(token.into());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}-sa.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");
    let as_chart = env.with_kubeconfig(path);
    let h = as_chart
        .start_hookline(&[
            "--allow-http",
            "--allow-cidr=127.0.0.0/8",
            "--public-url=auto",
            "--status-interval=1s",
        ])
        .await;

    let ok = Receiver::start().await;
    let rejecting = Receiver::start().await;
    rejecting.set_default(Reply::Status(400));
    for (name, url) in [("ok", &ok.url), ("rejecting", &rejecting.url)] {
        let sub: WebhookSubscription = serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": name},
            "spec": {"eventTypes": ["*"], "endpoint": {"url": url}},
        }))
        .expect("sub");
        env.api::<WebhookSubscription>().create(&PostParams::default(), &sub).await.expect("create");
        env.kubectl(&["wait", "--for=condition=Ready", &format!("whsub/{name}"), "--timeout=40s"]);
    }
    // A producer bound to the chart's publisher role publishes with its own token.
    env.kubectl(&["create", "serviceaccount", "producer"]);
    env.kubectl(&[
        "create",
        "rolebinding",
        "producer",
        &format!("--clusterrole={release}-hookline-publisher"),
        &format!("--serviceaccount={ns}:producer"),
    ]);
    let producer = env.kubectl(&["create", "token", "producer"]).trim().to_string();
    let body = json!({"specversion": "1.0", "id": "rbac-1", "source": "/s", "type": "t"}).to_string();
    wait_until("the producer may publish", Duration::from_secs(30), || async {
        let (status, _) = h
            .publish(&ns, &[("content-type", "application/cloudevents+json")], body.clone(), Some(&producer))
            .await;
        (status == 202).then_some(())
    })
    .await;
    assert_eq!(ok.wait_for(1, Duration::from_secs(30)).await[0].header("ce-id"), "rbac-1");
    let fevs: Api<FailedEvent> = env.api();
    wait_until("a FailedEvent for the rejecting endpoint", Duration::from_secs(30), || async {
        let list = fevs.list(&ListParams::default()).await.ok()?.items;
        list.iter()
            .any(|f| f.spec.subscription == "rejecting" && f.name_any().starts_with("rejecting-"))
            .then_some(())
    })
    .await;
    let subs: Api<WebhookSubscription> = env.api();
    wait_until("status written with the chart's permissions", Duration::from_secs(30), || async {
        (subs.get("ok").await.ok()?.status?.delivery_stats?.delivered == 1).then_some(())
    })
    .await;
    helm(&env, &["uninstall", &release, "--namespace", &ns]);
}
