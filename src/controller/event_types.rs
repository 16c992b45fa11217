//! EventTypes: every replica follows them into its [`Catalog`] (ingest checks publishes against
//! it), and one replica at a time writes their `Ready` condition.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Error;
use crate::api::{EventType, FIELD_MANAGER, Reason, condition_type, set_condition};
use crate::catalog::{Catalog, age_key, compile};
use crate::k8s::{FailureBackoff, apply_status};
use crate::metrics::Metrics;
use crate::registry::Readiness;
use crate::report::Chain;

/// How often an EventType that lost to an older one of its type is looked at again (the older
/// one may be deleted).
const DUPLICATE_RECHECK: Duration = Duration::from_secs(30);

fn api(client: Client, namespace: Option<&str>) -> Api<EventType> {
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Keep `catalog` in line with the EventTypes until `stop`; readiness waits for the first list.
///
/// Without the EventType CRD (a chart upgrade does not install new CRDs) the catalog stays empty,
/// publishes are not checked, and a warning says so, while the watch keeps trying.
pub async fn follow(
    client: Client,
    namespace: Option<String>,
    catalog: Catalog,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let stream = watcher(api(client, namespace.as_deref()), watcher::Config::default()).default_backoff();
    let mut stream = pin!(stream);
    let mut listed = Vec::new();
    let mut warned = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(et))) => listed.push(et),
            Some(Ok(watcher::Event::InitDone)) => {
                catalog.replace_all(&std::mem::take(&mut listed));
                if !readiness.catalog_synced() {
                    info!(namespaces = catalog.namespaces(), "event catalog synced");
                }
                readiness.set_catalog_synced();
            }
            Some(Ok(watcher::Event::Apply(et))) => {
                catalog.upsert(&et);
            }
            Some(Ok(watcher::Event::Delete(et))) => {
                catalog.remove(&et.namespace().unwrap_or_default(), &et.name_any())
            }
            Some(Err(e)) => {
                if is_not_found(&e) && !readiness.catalog_synced() {
                    readiness.set_catalog_synced();
                }
                if !warned || !is_not_found(&e) {
                    warn!(error = %Chain(&e), "watching EventTypes failed; publishes are checked against the catalog as last seen (with no EventType CRD installed: not at all)");
                    warned = true;
                }
            }
        }
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s)) if s.code == 404)
}

/// What the EventType status controller works with.
struct StatusContext {
    client: Client,
    metrics: Arc<Metrics>,
    cache: Cache<EventType>,
    backoff: FailureBackoff<EventType>,
}

/// Write every EventType's `Ready` condition until `stop` (run by one replica at a time).
pub async fn run_status(
    client: Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    stop: CancellationToken,
) {
    let controller =
        Controller::new(api(client.clone(), namespace.as_deref()), watcher::Config::default().any_semantic())
            .graceful_shutdown_on(stop.cancelled_owned());
    let ctx = Arc::new(StatusContext {
        client,
        metrics,
        cache: controller.store(),
        backoff: FailureBackoff::default(),
    });
    controller
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Ok((et, _)) = result {
                ctx.backoff.succeeded(&et);
            }
            async {}
        })
        .await;
}

fn error_policy(et: Arc<EventType>, error: &Error, ctx: Arc<StatusContext>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    let delay = ctx.backoff.failed(ObjectRef::from_obj(et.as_ref()));
    warn!(event_type = %ObjectRef::from_obj(et.as_ref()), error = %Chain(error), retry_in = ?delay, "EventType reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(et: Arc<EventType>, ctx: Arc<StatusContext>) -> Result<Action, Error> {
    let ns = et.namespace().ok_or(Error::MissingNamespace)?;
    // The oldest EventType of a type is the one ingest uses (the catalog's rule).
    let older = ctx
        .cache
        .state()
        .into_iter()
        .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && o.spec.type_ == et.spec.type_)
        .filter(|o| age_key(o) < age_key(&et))
        .min_by_key(|o| age_key(o));
    let (ready, reason, message) = match older {
        Some(o) => (
            false,
            Reason::DuplicateType,
            format!(
                "EventType {} (older) already describes type {:?}; this one is not used",
                o.name_any(),
                et.spec.type_
            ),
        ),
        None => compile(&et.spec).condition(),
    };
    let generation = et.metadata.generation;
    let current = et.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    set_condition(&mut conditions, condition_type::READY, ready, reason, message.clone(), generation, &now);
    if conditions != current.conditions || current.observed_generation != generation {
        let status = json!({"observedGeneration": generation, "conditions": conditions});
        let api: Api<EventType> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &et.name_any(), FIELD_MANAGER, status)
            .await
            .map_err(Error::kube("writing the EventType status"))?;
        if !ready {
            info!(event_type = %ObjectRef::from_obj(et.as_ref()), reason = reason.as_str(), %message, "EventType not ready");
        }
    }
    Ok(match reason {
        Reason::DuplicateType => Action::requeue(DUPLICATE_RECHECK),
        _ => Action::await_change(),
    })
}
