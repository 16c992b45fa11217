//! Small Kubernetes helpers the controllers and writers share: waiting for a watch cache, the
//! server-side-apply status write, the identity Kubernetes Events are reported under, and the
//! per-object backoff after failed reconciliations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
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

/// Per-object backoff after failed reconciliations: 1 s, 2 s, 4 s, … up to 256 s, and back to 1 s
/// once the object reconciles cleanly.
pub struct FailureBackoff<K: Resource<DynamicType = ()>> {
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
}

impl<K: Resource<DynamicType = ()>> Default for FailureBackoff<K> {
    fn default() -> Self {
        Self { failures: Mutex::default() }
    }
}

impl<K: Resource<DynamicType = ()>> FailureBackoff<K> {
    /// Longest wait between two attempts.
    pub const MAX: Duration = Duration::from_secs(256);

    /// Count one more failure of `key`; returns how long to wait before the next attempt.
    pub fn failed(&self, key: ObjectRef<K>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        // 1 s, doubling with each failure in a row, up to MAX.
        Duration::from_secs(1u64.checked_shl(*n - 1).unwrap_or(u64::MAX)).min(Self::MAX)
    }

    /// `key` reconciled cleanly: its next failure waits 1 s again.
    pub fn succeeded(&self, key: &ObjectRef<K>) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FailedEvent;

    #[test]
    fn failures_back_off_per_object_and_clear_on_success() {
        let backoff = FailureBackoff::<FailedEvent>::default();
        let (a, b) = (ObjectRef::new("a").within("ns"), ObjectRef::new("b").within("ns"));
        let waits: Vec<u64> = (0..4).map(|_| backoff.failed(a.clone()).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8]);
        assert_eq!(backoff.failed(b.clone()).as_secs(), 1, "another object starts at 1 s");
        assert_eq!(
            (0..20).map(|_| backoff.failed(a.clone())).last(),
            Some(FailureBackoff::<FailedEvent>::MAX)
        );
        backoff.succeeded(&a);
        assert_eq!(backoff.failed(a).as_secs(), 1);
    }
}
