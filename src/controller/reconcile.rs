//! Reconciliation of one `WebhookSubscription`: fetch, decide (pure), write.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::signing_secret::generated_secret;
use super::{Context, Error, FINALIZER};
use crate::api::{FIELD_MANAGER, Reason, WebhookSubscription, annotations, condition_type};
use crate::k8s::apply_status;
use crate::policy::decision::{
    Decision, EndpointState, Facts, Signing, changed, decide, generated_secret_name, owned,
};
use crate::policy::spec::{Parsed, parse};
use crate::registry::ActiveSubscription;
use crate::report::Chain;
use crate::verify::Verdict;

/// How often a healthy subscription is looked at even when nothing changed.
const RESYNC: Duration = Duration::from_secs(600);
/// How soon a subscription waiting for its named signing Secret is looked at again.
const SECRET_RECHECK: Duration = Duration::from_secs(15);

/// Reconcile one subscription, behind the finalizer that guarantees cleanup on deletion.
pub async fn reconcile(sub: Arc<WebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let key = ObjectRef::from_obj(sub.as_ref());
    ctx.registry.saw(&sub.uid().unwrap_or_default(), &key);
    let ns = sub.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, sub, |event| async {
        match event {
            FinalizerEvent::Apply(sub) => apply(&sub, &ctx, &api).await,
            FinalizerEvent::Cleanup(sub) => cleanup(&sub, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.mark_reconciled(key);
    result
}

async fn apply(
    sub: &WebhookSubscription,
    ctx: &Context,
    api: &Api<WebhookSubscription>,
) -> Result<Action, Error> {
    // A spec is parsed (its CEL filter compiled) once per generation: a registered subscription
    // of the same generation already holds the result.
    let generation = sub.metadata.generation.unwrap_or_default();
    let known = ctx
        .registry
        .get(&ObjectRef::from_obj(sub))
        .filter(|a| a.generation == generation && Some(&a.uid) == sub.metadata.uid.as_ref())
        .map(|a| Parsed { schedule: a.schedule, filter: a.filter.clone() });
    let (parsed, problems) = match known.map_or_else(|| parse(&sub.spec, ctx.policy), Ok) {
        Ok(parsed) => (Some(parsed), Vec::new()),
        Err(problems) => (None, problems),
    };
    let signing = if problems.is_empty() { Some(ensure_signing_secret(sub, ctx).await?) } else { None };
    let secret_name = match &signing {
        Some(Signing::Present(name)) => Some(name.as_str()),
        _ => None,
    };
    // With several replicas, only the subscription's owner runs its handshake and writes its
    // status; the others keep it in their registry, for routing the events published to them.
    let uid = sub.uid().unwrap_or_default();
    let acts = ctx.ownership.owns(&uid);
    let verified = if problems.is_empty() {
        ctx.verifier.verify(sub, secret_name, acts).await
    } else {
        Verdict {
            state: EndpointState::Pending("the spec is invalid".into()),
            rate_per_minute: None,
            recheck_in: None,
        }
    };
    let facts =
        Facts { problems, signing, verification: verified.state.clone(), now: jiff::Timestamp::now() };
    let mut decision = decide(sub, &facts);
    if let Some(recheck) = verified.recheck_in {
        decision.requeue_after = Some(decision.requeue_after.map_or(recheck, |d| d.min(recheck)));
    }

    let (ns, name) = (sub.namespace().unwrap_or_default(), sub.name_any());
    if acts {
        let ready =
            decision.status.conditions.iter().any(|c| c.type_ == condition_type::READY && c.status == "True");
        ctx.metrics.set_ready(&ns, &name, ready, decision.ready_reason.as_str());
    } else {
        ctx.metrics.forget_ready(&ns, &name);
    }
    if acts && changed(sub.status.as_ref(), &decision.status) {
        write_status(sub, &decision, ctx, api).await?;
    }
    let key = ObjectRef::from_obj(sub);
    match decision.gate.zip(parsed) {
        Some((gate, parsed)) => ctx.registry.upsert(ActiveSubscription {
            key,
            uid: sub.uid().unwrap_or_default(),
            generation,
            spec: Arc::new(sub.spec.clone()),
            schedule: parsed.schedule,
            filter: parsed.filter,
            signing_secret: decision
                .status
                .signing_secret_ref
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            rate_per_minute: verified.rate_per_minute,
            gate,
            enable: sub.annotations().get(annotations::ENABLE).cloned(),
        }),
        None => ctx.registry.remove(&key),
    }
    if acts {
        publish_transition(sub, &decision, ctx).await;
        warn_of_unknown_types(sub, ctx).await;
        if decision.gate.is_some() {
            send_requested_test_event(sub, ctx).await?;
        }
    }

    Ok(match decision.ready_reason {
        Reason::InvalidSpec => Action::await_change(),
        Reason::SigningSecretMissing => {
            Action::requeue(SECRET_RECHECK.min(decision.requeue_after.unwrap_or(SECRET_RECHECK)))
        }
        _ => Action::requeue(decision.requeue_after.map_or(RESYNC, |d| d.min(RESYNC))),
    })
}

async fn cleanup(sub: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    ctx.registry.remove(&ObjectRef::from_obj(sub));
    ctx.registry.forget(&sub.uid().unwrap_or_default());
    ctx.forget_unknown_types(&sub.uid().unwrap_or_default());
    let dropped = ctx
        .store
        .drop_subscription(&sub.uid().unwrap_or_default())
        .await
        .map_err(|source| Error::Store { action: "dropping the queued deliveries", source })?;
    info!(subscription = %ObjectRef::from_obj(sub), dropped, "subscription deleted; its queued deliveries were dropped");
    ctx.metrics.forget_subscription(&sub.namespace().unwrap_or_default(), &sub.name_any());
    Ok(Action::await_change())
}

/// Find the signing Secret, creating `<name>-signing` when the spec names none.
///
/// An existing Secret is never overwritten: a user may have put their own key there.
async fn ensure_signing_secret(sub: &WebhookSubscription, ctx: &Context) -> Result<Signing, Error> {
    let ns = sub.namespace().ok_or(Error::MissingNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(signing) = &sub.spec.signing {
        let name = signing.secret_ref.name.clone();
        let found =
            secrets.get_metadata_opt(&name).await.map_err(Error::kube("reading the signing Secret"))?;
        return Ok(if found.is_some() { Signing::Present(name) } else { Signing::Missing(name) });
    }
    let name = generated_secret_name(sub);
    if secrets.get_metadata_opt(&name).await.map_err(Error::kube("reading the signing Secret"))?.is_some() {
        return Ok(Signing::Present(name));
    }
    match secrets
        .create(
            &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() },
            &generated_secret(sub, &name),
        )
        .await
    {
        Ok(created) => {
            ctx.verifier.secrets.remember(&created);
            info!(subscription = %ObjectRef::from_obj(sub), secret = %name, "created signing Secret");
            let event = Event {
                type_: EventType::Normal,
                reason: "SigningSecretCreated".into(),
                note: Some(format!("Created Secret {name} holding a new signing secret")),
                action: "CreateSecret".into(),
                secondary: None,
            };
            publish(ctx, sub, event).await;
            Ok(Signing::Present(name))
        }
        // Someone (an earlier reconcile, or the user) created it meanwhile: it is not ours to replace.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Signing::Present(name)),
        Err(e) => Err(Error::kube("creating the signing Secret")(e)),
    }
}

async fn write_status(
    sub: &WebhookSubscription,
    decision: &Decision,
    ctx: &Context,
    api: &Api<WebhookSubscription>,
) -> Result<(), Error> {
    if let Err(e) = apply_status(api, &sub.name_any(), FIELD_MANAGER, owned(&decision.status)).await {
        ctx.metrics.status_write_failed("controller");
        return Err(Error::kube("writing the subscription status")(e));
    }
    ctx.metrics.status_written();
    debug!(subscription = %ObjectRef::from_obj(sub), "status written");
    Ok(())
}

/// Record a Kubernetes Event when the `Ready` reason changes, so `kubectl describe` tells the story.
async fn publish_transition(sub: &WebhookSubscription, decision: &Decision, ctx: &Context) {
    let previous = sub
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition_type::READY))
        .map(|c| c.reason.clone());
    let reason = decision.ready_reason;
    if previous.as_deref() == Some(reason.as_str()) {
        return;
    }
    ctx.metrics.ready_changed(reason.as_str());
    let message = decision
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| c.message.clone());
    let type_ = match reason {
        Reason::Active | Reason::Suspended | Reason::AwaitingValidation => EventType::Normal,
        _ => EventType::Warning,
    };
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: message,
        action: "Reconcile".into(),
        secondary: None,
    };
    publish(ctx, sub, event).await;
}

/// Record a Warning Event when the subscription names exact types its namespace's EventType
/// catalog lacks (only when the namespace has one): a typo there means events never match.
async fn warn_of_unknown_types(sub: &WebhookSubscription, ctx: &Context) {
    let ns = sub.namespace().unwrap_or_default();
    let missing = ctx.catalog.lacks(&ns, &sub.spec.event_types);
    let generation = sub.metadata.generation.unwrap_or_default();
    if !ctx.unknown_types_changed(&sub.uid().unwrap_or_default(), generation, &missing) || missing.is_empty()
    {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "UnknownEventType".into(),
        note: Some(format!(
            "spec.eventTypes names {} that no EventType of namespace {ns} describes (kubectl get eventtypes -n {ns}); \
             events of such types are still delivered if published",
            missing.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
        )),
        action: "Reconcile".into(),
        secondary: None,
    };
    publish(ctx, sub, event).await;
}

async fn publish(ctx: &Context, sub: &WebhookSubscription, event: Event) {
    // An Event is a courtesy to humans: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &sub.object_ref(&())).await {
        warn!(subscription = %ObjectRef::from_obj(sub), error = %Chain(&e), "could not record a Kubernetes Event");
    }
}

/// The `hookline.dev/test-event` annotation: each new value sends one test event. The event id is
/// derived from the value, so repeated reconciles of the same value are deduplicated by the store.
async fn send_requested_test_event(sub: &WebhookSubscription, ctx: &Context) -> Result<(), Error> {
    let Some(value) = sub.annotations().get(annotations::TEST_EVENT) else { return Ok(()) };
    let uid = sub.uid().unwrap_or_default();
    let digest = Sha256::digest(format!("{uid}/{value}").as_bytes());
    let id = format!("test-{}", hex::encode(&digest[..12]));
    let ns = sub.namespace().unwrap_or_default();
    let queued = ctx
        .dispatchers
        .send_test(&ns, &uid, &crate::delivery::ping(id.clone(), &ns, &sub.name_any()))
        .await
        .map_err(|source| Error::Store { action: "queueing the requested test event", source })?;
    if queued > 0 {
        info!(subscription = %ObjectRef::from_obj(sub), id, "test event queued (annotation)");
    }
    Ok(())
}
