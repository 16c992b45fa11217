//! The chart's alerts (PrometheusRule) and Grafana dashboard: the alerts pass their promtool unit
//! tests (`tests/fixtures/monitoring/alerts-test.yaml`), and every PromQL expression in either
//! parses (`promtool check rules`) and names only metrics a running Hookline exports. `promtool`
//! comes from Debian's prometheus package (`hack/test.sh` installs it), or `HOOKLINE_PROMTOOL`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{LOCAL, TestEnv, http_get, wait_until};
use hookline::api::WebhookSubscription;
use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hookline");
const ALERT_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/monitoring/alerts-test.yaml");

fn promtool(dir: &Path, args: &[&str]) -> String {
    let tool = std::env::var("HOOKLINE_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&tool).current_dir(dir).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} cannot run ({e}): install Debian's prometheus package (hack/test.sh does)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The chart's PrometheusRule (release `hookline` in namespace `ops`, as the unit tests expect)
/// and dashboard.
fn rendered() -> (Value, Value) {
    let yaml = crate::support::hack(
        "helm.sh",
        &[
            "template",
            "hookline",
            CHART,
            "--namespace",
            "ops",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
        ],
        &[],
    );
    let (mut rule, mut dashboard) = (None, None);
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let object = Value::deserialize(doc).expect("rendered YAML");
        match object["kind"].as_str() {
            Some("PrometheusRule") => rule = Some(object),
            Some("ConfigMap") if object["data"]["hookline.json"].is_string() => {
                let json = object["data"]["hookline.json"].as_str().unwrap_or_default();
                dashboard = Some(serde_json::from_str(json).expect("the dashboard is JSON"));
            }
            _ => {}
        }
    }
    (rule.expect("a PrometheusRule"), dashboard.expect("the dashboard ConfigMap"))
}

/// Write the rule's groups as a Prometheus rules file.
fn rules_file(dir: &Path, rule: &Value) {
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&groups).expect("yaml"))
        .expect("write rules");
}

/// Every PromQL expression: the alerts', and the dashboard's with Grafana's variables
/// substituted as Grafana would.
fn expressions(rule: &Value, dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has a query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            exprs.push(expr.replace("$__rate_interval", "5m").replace("$namespace", ".*"));
        }
    }
    exprs
}

#[test]
fn the_alerts_fire_where_their_unit_tests_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rule, _) = rendered();
    rules_file(dir.path(), &rule);
    std::fs::copy(ALERT_TESTS, dir.path().join("alerts-test.yaml")).expect("copy tests");
    promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    let out = promtool(dir.path(), &["test", "rules", "alerts-test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a test and a runbook section.
    let tests = std::fs::read_to_string(ALERT_TESTS).expect("tests");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    for alert in rule["spec"]["groups"][0]["rules"].as_array().expect("rules") {
        let name = alert["alert"].as_str().expect("an alert");
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has a unit test");
        assert!(
            readme.contains(&format!("#### {name}")),
            "{name} has a runbook section in docs/operations.md"
        );
        let runbook = alert["annotations"]["runbook_url"].as_str().expect("runbook_url");
        assert!(runbook.ends_with(&format!("#{}", name.to_lowercase())), "{runbook}");
        for field in ["summary", "description"] {
            assert!(alert["annotations"][field].is_string(), "{name} has a {field}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_expression_parses_and_names_only_metrics_hookline_exports() {
    let (rule, dashboard) = rendered();
    let exprs = expressions(&rule, &dashboard);
    // promtool parses them as recording rules.
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({ "record": format!("check:expression_{i}"), "expr": expr }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "expressions", "rules": records }] });
    std::fs::write(dir.path().join("expressions.yaml"), serde_yaml::to_string(&file).expect("yaml"))
        .expect("write");
    promtool(dir.path(), &["check", "rules", "expressions.yaml"]);

    // The metric families a running Hookline exports, once a subscription has delivered,
    // failed and dead-lettered (a family shows only once it has a series).
    let env = TestEnv::with_crds("monitoring-names").await;
    let hookline = env.start_hookline(LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Status(500));
    env.create_active(WebhookSubscription::test("s", &rx.url).failing_fast()).await;
    let event =
        json!({"specversion": "1.0", "id": "m1", "source": "/shop", "type": "order.created", "data": {}});
    hookline.publish_json(&env.namespace, event).await;
    wait_until("a dead letter", Duration::from_secs(45), || async {
        hookline.metric_sum("hookline_dead_letters_total").await.filter(|n| *n >= 1.0)
    })
    .await;
    let (_, text) = http_get(&format!("{}/metrics", hookline.metrics)).await.expect("/metrics");
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(exported.contains("hookline_deliveries"), "{text}");
    let name = regex::Regex::new(r"\bhookline_[a-z_]+").expect("regex");
    let mut named = BTreeSet::new();
    for expr in &exprs {
        for m in name.find_iter(expr) {
            named.insert(m.as_str().to_string());
        }
    }
    assert!(named.len() >= 10, "{named:?}");
    for metric in &named {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| metric.strip_suffix(suffix).filter(|f| exported.contains(f)))
            .unwrap_or(metric);
        assert!(exported.contains(family), "{metric} is not exported by Hookline; it exports {exported:?}");
    }
}
