//! The FailedEvent controller: replays on request (`hookline.dev/replay=true`) and deletes
//! FailedEvents past their TTL.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store as Cache;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::record::from_record;
use super::{Limits, replay_key, subscription_ref};
use crate::api::{FIELD_MANAGER, FailedEvent, Reason, ReplayOutcome, annotations};
use crate::delivery::Dispatchers;
use crate::k8s::apply_status;
use crate::metrics::Metrics;
use crate::policy::conditions::Gate;
use crate::registry::Registry;
use crate::store::{NewEvent, Replay, Store, now_ms};

/// What the FailedEvent controller works with.
pub struct FailedEventContext {
    pub client: Client,
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub dispatchers: Arc<Dispatchers>,
    pub limits: Limits,
}

/// Errors of one FailedEvent reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} failed: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("queueing the replay failed: {0}")]
    Store(#[source] crate::store::StoreError),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Store(_) => "store",
        }
    }
}

/// Build the controller; returns its watch cache (for counting) and the future that runs it.
pub fn run(
    ctx: Arc<FailedEventContext>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Cache<FailedEvent>, impl Future<Output = ()>) {
    let api: Api<FailedEvent> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), &ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller =
        Controller::new(api, watcher::Config::default().any_semantic()).graceful_shutdown_on(shutdown);
    let cache = controller.store();
    let metrics = ctx.metrics.clone();
    let fut = async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| {
                if let Err(e) = &r {
                    metrics.reconcile_failed("failed_event");
                    tracing::debug!(error = %e, "FailedEvent reconcile");
                }
                async {}
            })
            .await;
    };
    (cache, fut)
}

fn error_policy(fev: Arc<FailedEvent>, error: &Error, _ctx: Arc<FailedEventContext>) -> Action {
    warn!(failed_event = %fev.name_any(), error = %error, label = error.metric_label(), "FailedEvent reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(fev: Arc<FailedEvent>, ctx: Arc<FailedEventContext>) -> Result<Action, Error> {
    let api: Api<FailedEvent> = Api::namespaced(ctx.client.clone(), &fev.namespace().unwrap_or_default());
    let age = fev
        .creation_timestamp()
        .map(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO);
    if age >= ctx.limits.ttl {
        info!(failed_event = %fev.name_any(), "FailedEvent past its TTL: deleting");
        return match api.delete(&fev.name_any(), &Default::default()).await {
            Ok(_) => Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
            Err(source) => Err(Error::Kube { action: "deleting an expired FailedEvent", source }),
        };
    }
    let expires_in = ctx.limits.ttl - age;
    if fev.annotations().get(annotations::REPLAY).map(String::as_str) == Some("true") {
        replay(&fev, &ctx, &api).await?;
    }
    Ok(Action::requeue(expires_in.min(Duration::from_secs(3600))))
}

async fn replay(fev: &FailedEvent, ctx: &FailedEventContext, api: &Api<FailedEvent>) -> Result<(), Error> {
    // Take the request first, guarded by the resourceVersion we saw: a second reconcile of the
    // same (stale) version cannot take it again, so one annotation means one replay. A crash
    // right after this loses only the request (the FailedEvent stays; annotate it again).
    let take = json!({"metadata": {"annotations": {annotations::REPLAY: null}, "resourceVersion": fev.resource_version()}});
    match api.patch(&fev.name_any(), &PatchParams::default(), &Patch::Merge(&take)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(()),
        Err(source) => return Err(Error::Kube { action: "taking the replay request", source }),
    }
    let owner_uid =
        fev.owner_references().iter().find(|o| o.kind == "WebhookSubscription").map(|o| o.uid.clone());
    let sub = ctx.registry.get(&subscription_ref(fev)).filter(|s| Some(&s.uid) == owner_uid.as_ref());
    let (outcome, message) = match &sub {
        None => (
            ReplayOutcome::SubscriptionGone,
            "the subscription no longer exists (or is invalid); nothing was sent".to_string(),
        ),
        Some(sub) => {
            let event = from_record(&fev.spec.event).map_err(|e| Error::Kube {
                action: "reading the recorded event",
                source: kube::Error::Service(e.to_string().into()),
            })?;
            let now = now_ms();
            let new = NewEvent {
                namespace: fev.namespace().unwrap_or_default(),
                source: event.source.clone(),
                event_id: event.id.clone(),
                event_type: event.type_.clone(),
                body: event.to_json_bytes(),
                targets: vec![sub.uid.clone()],
                accepted_at: now,
            };
            let store = &ctx.store;
            if let Some(job) =
                store.replay(Replay { event: new, replay_of: replay_key(fev) }).await.map_err(Error::Store)?
            {
                ctx.dispatchers.notify(&sub.uid, job);
            }
            match sub.gate {
                Gate::Held(Reason::Suspended) => (
                    ReplayOutcome::SubscriptionSuspended,
                    "queued; the subscription is suspended, so it is delivered when it is resumed"
                        .to_string(),
                ),
                Gate::Held(reason) => (
                    ReplayOutcome::Pending,
                    format!("queued; delivery is held ({}) and resumes when it clears", reason.as_str()),
                ),
                Gate::Open => (ReplayOutcome::Pending, "queued for redelivery".to_string()),
            }
        }
    };
    let status = json!({
        "replay": {"outcome": outcome, "time": jiff::Timestamp::now(), "attempts": 0, "message": message}
    });
    apply_status(api, &fev.name_any(), FIELD_MANAGER, status)
        .await
        .map_err(|source| Error::Kube { action: "writing the replay status", source })?;
    info!(failed_event = %fev.name_any(), ?outcome, "replay requested");
    Ok(())
}
