//! The local control plane behaves like the Kubernetes API server the operator relies on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{TestEnv, wait_until};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A throwaway resource for exercising the API server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "test.hookline.dev", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
struct WidgetSpec {
    size: u32,
    #[serde(default = "default_color")]
    color: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
struct WidgetStatus {
    seen: bool,
}

fn default_color() -> String {
    "blue".into()
}

async fn apply_widget_crd(env: &TestEnv) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let crd = Widget::crd();
    crds.patch(&crd.name_any(), &PatchParams::apply("hookline-tests").force(), &Patch::Apply(&crd))
        .await
        .expect("server-side apply of a CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD Established within 30s")
    .expect("watch CRD");
    crate::support::wait_until_served(&env.client, "test.hookline.dev/v1", &["widgets"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_resource_round_trips_with_defaults_and_status() {
    let env = TestEnv::start("crd-round-trip").await;
    apply_widget_crd(&env).await;
    let widgets: Api<Widget> = env.api();
    let raw: Widget = serde_json::from_value(serde_json::json!({
        "apiVersion": "test.hookline.dev/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}
    }))
    .expect("widget");
    widgets.create(&PostParams::default(), &raw).await.expect("create widget");
    let got = widgets.get("w").await.expect("get widget");
    assert_eq!(
        got.spec,
        WidgetSpec { size: 3, color: "blue".into() },
        "schema default applied by the API server"
    );

    let status =
        serde_json::json!({"apiVersion": "test.hookline.dev/v1", "kind": "Widget", "status": {"seen": true}});
    widgets
        .patch_status("w", &PatchParams::apply("hookline-tests").force(), &Patch::Apply(&status))
        .await
        .expect("server-side apply of status");
    let got = widgets.get("w").await.expect("get widget");
    assert_eq!(got.status, Some(WidgetStatus { seen: true }));
    assert!(
        got.managed_fields().iter().any(|m| m.manager.as_deref() == Some("hookline-tests")),
        "managedFields record the field manager"
    );

    // A stale write is refused with 409.
    let mut stale = got.clone();
    stale.spec.size = 4;
    widgets.replace("w", &PostParams::default(), &stale).await.expect("fresh replace");
    stale.spec.size = 5;
    match widgets.replace("w", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("a stale replace must conflict, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kube_runtime_watcher_sees_objects_appear_and_change() {
    let env = TestEnv::start("watcher").await;
    let cms: Api<ConfigMap> = env.api();
    let mut stream = watcher(cms.clone(), watcher::Config::default()).applied_objects().boxed();
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("watched".into()), ..Default::default() },
        data: Some(BTreeMap::from([("k".to_string(), "v1".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(obj) = stream.try_next().await.expect("watch stream") {
            if obj.name_any() == "watched" {
                return obj;
            }
        }
        panic!("watch stream ended");
    })
    .await
    .expect("the watcher saw the ConfigMap within 20s");
    assert_eq!(seen.data.expect("data")["k"], "v1");

    let patch = serde_json::json!({"data": {"k": "v2"}});
    cms.patch("watched", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let changed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(obj) = stream.try_next().await.expect("watch stream") {
            if obj.data.as_ref().is_some_and(|d| d["k"] == "v2") {
                return obj;
            }
        }
        panic!("watch stream ended");
    })
    .await
    .expect("the watcher saw the change within 20s");
    assert_eq!(changed.name_any(), "watched");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let env = TestEnv::start("gc").await;
    let cms: Api<ConfigMap> = env.api();
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("owner".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![owner.controller_owner_ref(&()).expect("owner ref")]),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &dependent).await.expect("create dependent");
    cms.delete("owner", &DeleteParams::background()).await.expect("delete owner");
    wait_until("the garbage collector deletes the dependent", Duration::from_secs(60), || async {
        cms.get_opt("dependent").await.expect("get").is_none().then_some(())
    })
    .await;
}
