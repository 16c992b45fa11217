//! Small Kubernetes helpers the controllers and writers share: waiting for a watch cache, the
//! server-side-apply status write, and the identity Kubernetes Events are reported under.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Wait until a controller's watch cache has its initial list; `false` if it never will.
pub async fn cache_ready<K>(cache: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    // The cache's readiness signal wakes only its most recent waiter, and the controller's own
    // runner waits on it too; re-polling on a short interval sees the retained value instead.
    loop {
        match tokio::time::timeout(Duration::from_millis(250), cache.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => continue,
        }
    }
}

/// The server-side-apply body that sets `status` (the fields one field manager owns) on a `K`.
pub fn status_envelope<K: Resource<DynamicType = ()>>(status: impl Serialize) -> Value {
    json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status })
}

/// Apply `status` to the object `name` as `manager`, taking over fields another manager set.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = status_envelope::<K>(status);
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await
}

/// Who reports Hookline's Kubernetes Events: the pod, when the chart passes its name.
pub fn reporter() -> Reporter {
    Reporter {
        controller: "hookline".into(),
        instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
    }
}
