//! The CRDs on a CEL-enforcing API server (the 1.36 CRD server behind the local control plane):
//! each rule refuses, at `kubectl apply`, a manifest that breaks it, naming its field and
//! message, and accepts one that keeps it; the CRDs install without warnings; and the same holds
//! when the server judges as the oldest release it can emulate.

use std::path::Path;
use std::time::Duration;

use crate::support::cel_cases::{Case, cases, manifest};
use crate::support::{PrivateControlPlane, TestEnv, install_crds};

/// `kubectl apply` of one object: (succeeded, stderr).
fn apply(env: &TestEnv, object: &serde_json::Value) -> (bool, String) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{}.json",
        env.namespace,
        object["metadata"]["name"].as_str().expect("name")
    ));
    std::fs::write(&path, object.to_string()).expect("write manifest");
    let out = env.kubectl_output(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn check_case(env: &TestEnv, index: usize, case: &Case) {
    let name = format!("rule-{index}");
    let keeps = manifest(case.kind, &name, &case.keeps);
    let (ok, stderr) = apply(env, &keeps);
    assert!(ok, "{}: a manifest that keeps the rule is refused: {stderr}", case.message);

    let bad_name = if case.transition { name.clone() } else { format!("{name}-bad") };
    let (ok, stderr) = apply(env, &manifest(case.kind, &bad_name, &case.breaks));
    assert!(!ok, "{}: a manifest that breaks the rule is accepted", case.message);
    assert!(
        stderr.contains(&format!("{}: Invalid value", case.field)) && stderr.contains(case.message),
        "{}: the refusal names neither the field {} nor the message: {stderr}",
        case.message,
        case.field
    );
    let kind = case.kind.to_lowercase();
    let stored =
        env.kubectl(&["get", &format!("{kind}.hookline.dev/{bad_name}"), "-o", "json", "--ignore-not-found"]);
    if case.transition {
        let stored: serde_json::Value = serde_json::from_str(&stored).expect("stored object");
        assert_eq!(
            stored["spec"]["failure"]["attempts"], case.keeps["failure"]["attempts"],
            "the refused update changed nothing"
        );
    } else {
        assert_eq!(stored.trim(), "", "{}: nothing was stored", case.message);
    }
}

async fn every_rule_is_enforced_on(env: &TestEnv) {
    install_crds(&env.client).await;
    for (i, case) in cases().iter().enumerate() {
        check_case(env, i, case);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_refuses_what_breaks_it_and_accepts_what_keeps_it() {
    let env = TestEnv::start("cel-rules").await;
    every_rule_is_enforced_on(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crds_install_without_warnings() {
    let env = TestEnv::start("crd-warnings").await;
    install_crds(&env.client).await;
    // A server-side dry run judges the CRDs as an install would, warnings included.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/hookline.dev.yaml");
    let out = env.kubectl_output(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=hookline-tests",
        "--dry-run=server",
        "--validate=false",
        "-f",
        crds,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the CRDs are refused: {stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Warning:")).collect();
    // kubectl warns about the 1.20 front's version skew; the API server's own warnings are what count.
    let from_server: Vec<&&str> = warnings.iter().filter(|w| !w.contains("version difference")).collect();
    assert!(from_server.is_empty(), "the API server warns about the CRDs: {from_server:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rules_hold_on_the_oldest_release_the_server_emulates() {
    let plane = PrivateControlPlane::start_with(
        "cel-emulated-1-33",
        &[("HOOKLINE_CRD_SERVER_EMULATED_VERSION", "1.33")],
    );
    let env = TestEnv::start_on("cel-1-33", plane.kubeconfig()).await;
    tokio::time::timeout(Duration::from_secs(120), every_rule_is_enforced_on(&env))
        .await
        .expect("the rule cases finish within 2 minutes");
}
