//! The set of subscriptions the controller has reconciled, shared with the delivery side.
//!
//! The controller is the only writer: it inserts a subscription once its spec is valid and removes
//! it when the subscription is deleted. Readers (the router and the dispatchers) take snapshots and
//! are woken through a version counter whenever anything changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;

use crate::api::{WebhookSubscription, WebhookSubscriptionSpec};
use crate::policy::decision::Gate;
use crate::policy::filter::CelFilter;
use crate::policy::spec::RetrySchedule;

/// What the delivery side needs to know about one subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveSubscription {
    /// Namespace and name.
    pub key: ObjectRef<WebhookSubscription>,
    /// The object's UID: a subscription deleted and re-created under the same name is a new one.
    pub uid: String,
    /// The generation the spec belongs to.
    pub generation: i64,
    /// The validated spec.
    pub spec: Arc<WebhookSubscriptionSpec>,
    /// The spec's retry policy, parsed when the controller checked the spec.
    pub schedule: RetrySchedule,
    /// `spec.filter.cel`, compiled once per generation.
    pub filter: Option<Arc<CelFilter>>,
    /// The Secret the signing keys are read from.
    pub signing_secret: String,
    /// The rate the endpoint allowed in an Options handshake, requests per minute.
    pub rate_per_minute: Option<u32>,
    /// Whether events may flow.
    pub gate: Gate,
    /// The value of the annotation `hookline.dev/enable`: delivery disabled under another value
    /// (or generation) is enabled again.
    pub enable: Option<String>,
}

/// Shared registry of reconciled subscriptions.
#[derive(Clone)]
pub struct Registry {
    entries: Arc<RwLock<HashMap<ObjectRef<WebhookSubscription>, Arc<ActiveSubscription>>>>,
    /// Every subscription the controller has seen (valid or not), by UID: the work replicas share.
    seen: Arc<RwLock<HashMap<String, ObjectRef<WebhookSubscription>>>>,
    version: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { entries: Arc::default(), seen: Arc::default(), version: watch::Sender::new(0) }
    }
}

impl Registry {
    /// Insert or replace a subscription; readers are woken only when something changed.
    pub fn upsert(&self, sub: ActiveSubscription) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.get(&sub.key).is_some_and(|old| **old == sub) {
            return;
        }
        entries.insert(sub.key.clone(), Arc::new(sub));
        drop(entries);
        self.version.send_modify(|v| *v += 1);
    }

    /// Forget a subscription (deleted, or its spec became invalid).
    pub fn remove(&self, key: &ObjectRef<WebhookSubscription>) {
        let removed = self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(key);
        if removed.is_some() {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Remember a subscription the controller looked at, valid or not; readers are woken when
    /// it is new.
    pub fn saw(&self, uid: &str, key: &ObjectRef<WebhookSubscription>) {
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.contains_key(uid) {
            return;
        }
        seen.insert(uid.to_string(), key.clone());
        drop(seen);
        self.version.send_modify(|v| *v += 1);
    }

    /// Forget a deleted subscription seen before.
    pub fn forget(&self, uid: &str) {
        if self.seen.write().unwrap_or_else(|e| e.into_inner()).remove(uid).is_some() {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Every subscription the controller has seen and not seen deleted, by UID.
    pub fn seen(&self) -> HashMap<String, ObjectRef<WebhookSubscription>> {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One subscription, if known.
    pub fn get(&self, key: &ObjectRef<WebhookSubscription>) -> Option<Arc<ActiveSubscription>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// The subscription at `key`, if it is still the one with UID `uid` (neither deleted nor
    /// re-created under the same name since).
    pub fn get_uid(
        &self,
        key: &ObjectRef<WebhookSubscription>,
        uid: &str,
    ) -> Option<Arc<ActiveSubscription>> {
        self.get(key).filter(|s| s.uid == uid)
    }

    /// The subscriptions of one namespace, held or open.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<ActiveSubscription>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.key.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    /// Every known subscription.
    pub fn all(&self) -> Vec<Arc<ActiveSubscription>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// A receiver that changes whenever the registry does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Number of known subscriptions.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no subscription is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parts that must be up before the operator reports ready.
#[derive(Clone, Default)]
pub struct Readiness {
    watches_synced: Arc<AtomicBool>,
    subscriptions_loaded: Arc<AtomicBool>,
    catalog_synced: Arc<AtomicBool>,
    store_unreachable: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

impl Readiness {
    /// Mark the controller's watches as having completed their initial list.
    pub fn set_watches_synced(&self) {
        self.watches_synced.store(true, Ordering::Release);
    }

    /// Mark every subscription that existed at start as reconciled once, so events are routed to
    /// all of them.
    pub fn set_subscriptions_loaded(&self) {
        self.subscriptions_loaded.store(true, Ordering::Release);
    }

    /// Mark the event catalog as holding every EventType, so publishes can be checked.
    pub fn set_catalog_synced(&self) {
        self.catalog_synced.store(true, Ordering::Release);
    }

    /// Whether the event catalog holds every EventType.
    pub fn catalog_synced(&self) -> bool {
        self.catalog_synced.load(Ordering::Acquire)
    }

    /// Whether the store (a database server) answers; an embedded store always does.
    pub fn set_store_reachable(&self, reachable: bool) {
        self.store_unreachable.store(!reachable, Ordering::Release);
    }

    /// Mark the process as stopping: `/readyz` fails from now on, so Kubernetes takes the pod out
    /// of its Services, while ingest still serves until the shutdown delay has passed.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// What `/readyz` reports as missing: what ingest needs ([`Readiness::missing`]), and that
    /// the process is not stopping.
    pub fn probe(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Acquire) { Some("shutting down") } else { self.missing() }
    }

    /// Whether every subscription that existed at start has been looked at once.
    pub fn loaded(&self) -> bool {
        self.subscriptions_loaded.load(Ordering::Acquire)
    }

    /// What is not ready, or `None` when everything is.
    pub fn missing(&self) -> Option<&'static str> {
        if self.store_unreachable.load(Ordering::Acquire) {
            Some("the store is unreachable")
        } else if !self.watches_synced.load(Ordering::Acquire) {
            Some("watches have not synced yet")
        } else if !self.subscriptions_loaded.load(Ordering::Acquire) {
            Some("existing subscriptions are still being loaded")
        } else if !self.catalog_synced.load(Ordering::Acquire) {
            Some("the event catalog has not synced yet")
        } else {
            None
        }
    }
}

#[cfg(test)]
impl ActiveSubscription {
    /// A subscription `name` in `ns` with a minimal valid spec, for unit tests.
    pub(crate) fn test(ns: &str, name: &str, gate: Gate) -> Self {
        let spec = WebhookSubscriptionSpec {
            event_types: vec!["*".into()],
            filter: None,
            endpoint: crate::api::Endpoint {
                url: "https://example.com/hook".into(),
                headers: Default::default(),
                headers_from: None,
                ca_bundle_from: None,
                timeout_seconds: 15,
            },
            delivery: Default::default(),
            signing: None,
            retry_policy: Default::default(),
            dead_letter: Default::default(),
            expires_at: None,
            suspend: false,
            validation: Default::default(),
        };
        ActiveSubscription {
            key: ObjectRef::new(name).within(ns),
            uid: format!("uid-{name}"),
            generation: 1,
            schedule: crate::policy::spec::retry_schedule(&spec).expect("the default schedule"),
            filter: None,
            spec: Arc::new(spec),
            signing_secret: format!("{name}-signing"),
            rate_per_minute: None,
            gate,
            enable: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Reason;

    #[test]
    fn a_stopping_process_fails_its_probe_but_not_ingest() {
        let readiness = Readiness::default();
        readiness.set_watches_synced();
        readiness.set_subscriptions_loaded();
        readiness.set_catalog_synced();
        assert_eq!((readiness.missing(), readiness.probe()), (None, None));
        readiness.set_stopping();
        assert_eq!(readiness.probe(), Some("shutting down"), "/readyz takes the pod out of Services");
        assert_eq!(readiness.missing(), None, "ingest goes on taking events meanwhile");
    }

    #[test]
    fn readers_are_woken_only_on_real_changes() {
        let registry = Registry::default();
        let rx = registry.subscribe();
        registry.upsert(ActiveSubscription::test("a", "one", Gate::Open));
        assert_eq!(*rx.borrow(), 1);
        registry.upsert(ActiveSubscription::test("a", "one", Gate::Open));
        assert_eq!(*rx.borrow(), 1, "an identical upsert is not a change");
        registry.upsert(ActiveSubscription::test("a", "one", Gate::Held(Reason::Suspended)));
        assert_eq!(*rx.borrow(), 2);
        registry.remove(&ObjectRef::new("one").within("a"));
        registry.remove(&ObjectRef::new("one").within("a"));
        assert_eq!(*rx.borrow(), 3);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_subscription_recreated_under_its_name_is_not_the_one_with_the_old_uid() {
        let registry = Registry::default();
        registry.upsert(ActiveSubscription::test("a", "one", Gate::Open));
        let key = ObjectRef::new("one").within("a");
        assert!(registry.get_uid(&key, "uid-one").is_some());
        assert!(registry.get_uid(&key, "uid-of-the-deleted-one").is_none());
        assert!(registry.get_uid(&ObjectRef::new("two").within("a"), "uid-one").is_none());
    }

    #[test]
    fn namespaces_are_kept_apart() {
        let registry = Registry::default();
        registry.upsert(ActiveSubscription::test("a", "one", Gate::Open));
        registry.upsert(ActiveSubscription::test("b", "two", Gate::Open));
        let names: Vec<_> = registry.in_namespace("a").iter().map(|s| s.key.name.clone()).collect();
        assert_eq!(names, ["one"]);
    }
}
