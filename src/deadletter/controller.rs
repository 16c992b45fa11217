//! The FailedEvent controller: replays on request (`hookline.dev/replay=true`) and deletes
//! FailedEvents past their TTL.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::record::from_record;
use super::{Error, Parts, ReplayKey, subscription_ref};
use crate::api::{FIELD_MANAGER, FailedEvent, Reason, ReplayOutcome, annotations};
use crate::delivery::to_store;
use crate::k8s::{FailureBackoff, apply_status};
use crate::policy::decision::Gate;
use crate::report::Chain;
use crate::store::{Replay, now_ms};

/// How long a replay request waits before it is looked at again while subscriptions load.
const REPLAY_WAIT: Duration = Duration::from_secs(1);

/// What the FailedEvent controller works with: the parts, and its backoff.
pub(super) struct FailedEventContext {
    pub(super) parts: Parts,
    /// Per-FailedEvent backoff after failed reconciliations.
    pub(super) backoff: FailureBackoff<FailedEvent>,
}

/// Build the controller; returns its watch cache (for counting) and the future that runs it.
pub(super) fn run(
    ctx: Arc<FailedEventContext>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Cache<FailedEvent>, impl Future<Output = ()>) {
    let api: Api<FailedEvent> = match namespace {
        Some(ns) => Api::namespaced(ctx.parts.client.clone(), &ns),
        None => Api::all(ctx.parts.client.clone()),
    };
    let controller =
        Controller::new(api, watcher::Config::default().any_semantic()).graceful_shutdown_on(shutdown);
    let cache = controller.store();
    let fut = async move {
        controller
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| {
                if let Ok((fev, _)) = result {
                    ctx.backoff.succeeded(&fev);
                }
                async {}
            })
            .await;
    };
    (cache, fut)
}

/// Count a failed reconciliation and retry it with the FailedEvent's own backoff.
fn error_policy(fev: Arc<FailedEvent>, error: &Error, ctx: Arc<FailedEventContext>) -> Action {
    ctx.parts.metrics.reconcile_failed(error.metric_label());
    let delay = ctx.backoff.failed(ObjectRef::from_obj(fev.as_ref()));
    warn!(failed_event = %fev.name_any(), error = %Chain(error), retry_in = ?delay, "FailedEvent reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(fev: Arc<FailedEvent>, ctx: Arc<FailedEventContext>) -> Result<Action, Error> {
    let api: Api<FailedEvent> =
        Api::namespaced(ctx.parts.client.clone(), &fev.namespace().unwrap_or_default());
    let age = fev
        .creation_timestamp()
        .map(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO);
    if age >= ctx.parts.limits.ttl {
        info!(failed_event = %fev.name_any(), "FailedEvent past its TTL: deleting");
        return match api.delete(&fev.name_any(), &Default::default()).await {
            Ok(_) => Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
            Err(source) => Err(Error::Kube { action: "deleting an expired FailedEvent", source }),
        };
    }
    let expires_in = ctx.parts.limits.ttl - age;
    if fev.annotations().get(annotations::REPLAY).map(String::as_str) == Some("true") {
        // Right after a start the registry may not hold the subscription yet: answering
        // SubscriptionGone then would be wrong, and would use the request up.
        if !ctx.parts.readiness.loaded() {
            return Ok(Action::requeue(REPLAY_WAIT));
        }
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
    let sub = owner_uid.and_then(|uid| ctx.parts.registry.get_uid(&subscription_ref(fev), &uid));
    let (outcome, message) = match &sub {
        None => (
            ReplayOutcome::SubscriptionGone,
            "the subscription no longer exists (or is invalid); nothing was sent".to_string(),
        ),
        Some(sub) => match from_record(&fev.spec.event) {
            // The request is taken, so retrying would not replay it: say why, once.
            Err(e) => {
                (ReplayOutcome::Failed, format!("the recorded event cannot be sent again: {}", Chain(&e)))
            }
            Ok(event) => {
                let new = to_store(
                    &fev.namespace().unwrap_or_default(),
                    &event,
                    event.to_json_bytes(),
                    vec![sub.uid.clone()],
                    now_ms(),
                );
                let replay = Replay { event: new, replay_of: ReplayKey::of(fev).to_string() };
                if let Some(job) = ctx.parts.store.replay(replay).await? {
                    ctx.parts.dispatchers.notify(&sub.uid, job);
                }
                queued(sub.gate)
            }
        },
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

/// The replay status of an event queued again for a subscription behind `gate`.
fn queued(gate: Gate) -> (ReplayOutcome, String) {
    match gate {
        Gate::Held(Reason::Suspended) => (
            ReplayOutcome::SubscriptionSuspended,
            "queued; the subscription is suspended, so it is delivered when it is resumed".to_string(),
        ),
        Gate::Held(reason) => (
            ReplayOutcome::Pending,
            format!("queued; delivery is held ({}) and resumes when it clears", reason.as_str()),
        ),
        Gate::Open => (ReplayOutcome::Pending, "queued for redelivery".to_string()),
    }
}
