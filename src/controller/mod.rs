//! The `WebhookSubscription` controller: validates specs, provisions signing Secrets, computes
//! conditions, and keeps the [`Registry`] the delivery side reads from.

pub mod event_types;
mod reconcile;
pub mod signing_secret;

#[cfg(test)]
mod mock_tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::api::{WebhookSubscription, labels};
use crate::catalog::Catalog;
use crate::delivery::Dispatchers;
use crate::k8s::FailureBackoff;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
pub use crate::policy::spec::Policy;
use crate::registry::Readiness;
use crate::registry::Registry;
use crate::report::Chain;
use crate::store::Store;
use crate::verify::Verifier;
pub use reconcile::reconcile;

/// The finalizer that lets Hookline drop a subscription's queued deliveries before it goes away.
pub const FINALIZER: &str = "hookline.dev/cleanup";

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} failed")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// What the API server (or the client) said.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper failed to add or remove the finalizer.
    #[error("finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The delivery store failed.
    #[error("{action} failed")]
    Store {
        /// What was being done.
        action: &'static str,
        /// What the store said.
        #[source]
        source: crate::store::StoreError,
    },
    /// The object came without a namespace (impossible for a namespaced resource).
    #[error("the object has no namespace")]
    MissingNamespace,
}

impl Error {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Store { .. } => "store",
            Error::MissingNamespace => "missing_namespace",
        }
    }

    pub(crate) fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// What the operator allows.
    pub policy: Policy,
    /// The subscriptions the delivery side may act on.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The delivery store: a deleted subscription's jobs are dropped from it.
    pub store: Arc<dyn Store>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The delivery side: sends test events.
    pub dispatchers: Arc<Dispatchers>,
    /// Runs endpoint handshakes.
    pub verifier: Verifier,
    /// What this replica owns: it acts (handshakes, status, Events) for those subscriptions.
    pub ownership: Ownership,
    /// The event catalog, which a subscription's exact types are looked up in.
    pub catalog: Catalog,
    /// Per subscription uid, the generation and the types last found missing from the catalog
    /// (a Warning Event is recorded when they change).
    unknown_types: Mutex<HashMap<String, (i64, Vec<String>)>>,
    backoff: FailureBackoff<WebhookSubscription>,
    reconciled: Mutex<HashSet<ObjectRef<WebhookSubscription>>>,
}

/// What the controller is built from: every piece is required, so none can be forgotten.
pub struct Parts {
    /// Kubernetes client.
    pub client: Client,
    /// What the operator allows.
    pub policy: Policy,
    /// The subscriptions the delivery side may act on.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The delivery side: sends test events.
    pub dispatchers: Arc<Dispatchers>,
    /// Runs endpoint handshakes; its store is the delivery store.
    pub verifier: Verifier,
    /// What this replica owns.
    pub ownership: Ownership,
    /// The event catalog ingest checks against, which a subscription's exact types are looked up in.
    pub catalog: Catalog,
}

impl Context {
    /// Build the controller state.
    pub fn new(parts: Parts) -> Self {
        let Parts { client, policy, registry, metrics, dispatchers, verifier, ownership, catalog } = parts;
        // One store holds verification records and queued jobs alike.
        let store = verifier.store.clone();
        let recorder = Recorder::new(client.clone(), crate::k8s::reporter());
        Self {
            client,
            policy,
            registry,
            metrics,
            store,
            recorder,
            dispatchers,
            verifier,
            ownership,
            catalog,
            unknown_types: Mutex::default(),
            backoff: FailureBackoff::default(),
            reconciled: Mutex::default(),
        }
    }

    /// Remember that a subscription was reconciled at least once (for readiness).
    pub(crate) fn mark_reconciled(&self, key: ObjectRef<WebhookSubscription>) {
        self.reconciled.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    }

    /// Whether `missing` is news for this generation of the subscription `uid` (and remember it).
    fn unknown_types_changed(&self, uid: &str, generation: i64, missing: &[String]) -> bool {
        let mut memo = self.unknown_types.lock().unwrap_or_else(|e| e.into_inner());
        let now = (generation, missing.to_vec());
        if memo.get(uid) == Some(&now) {
            return false;
        }
        memo.insert(uid.to_string(), now);
        true
    }

    fn forget_unknown_types(&self, uid: &str) {
        self.unknown_types.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    fn all_reconciled(&self, keys: &[ObjectRef<WebhookSubscription>]) -> bool {
        let seen = self.reconciled.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter().all(|k| seen.contains(k))
    }
}

/// Decide what to do after a failed reconciliation: count it, log it, retry with backoff.
///
/// Invalid specs never get here: they are a `Ready=False/InvalidSpec` condition, not an error.
pub fn error_policy(sub: Arc<WebhookSubscription>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    let delay = ctx.backoff.failed(ObjectRef::from_obj(sub.as_ref()));
    warn!(
        subscription = %ObjectRef::from_obj(sub.as_ref()),
        error = %Chain(error),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Run the controller until `shutdown` resolves.
///
/// `acquired` names subscriptions this replica just took over: each is reconciled at once (its
/// handshake and status are its owner's to run).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    readiness: Readiness,
    acquired: impl futures::Stream<Item = ObjectRef<WebhookSubscription>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (subs, secrets): (Api<WebhookSubscription>, Api<Secret>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let owned_secrets =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let controller = Controller::new(subs, watcher::Config::default().any_semantic())
        .owns(secrets, owned_secrets)
        .reconcile_on(acquired)
        .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let loading = ctx.clone();
    tokio::spawn(async move {
        if !crate::k8s::cache_ready(&store).await {
            return;
        }
        info!("subscription watch synced");
        readiness.set_watches_synced();
        // Events are routed by the registry: accept none until every subscription that existed at
        // start is in it (or was looked at and found invalid).
        let existing: Vec<_> = store.state().iter().map(|s| ObjectRef::from_obj(s.as_ref())).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !loading.all_reconciled(&existing) {
            tick.tick().await;
        }
        info!(subscriptions = existing.len(), "existing subscriptions loaded");
        readiness.set_subscriptions_loaded();
    });
    controller
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                if let Ok((obj, _)) = result {
                    ctx.backoff.succeeded(&obj);
                }
            }
        })
        .await;
    info!("controller stopped");
}
