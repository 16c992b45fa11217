//! The FailedEvent writer: turns the store's dead-letter and replay-result outboxes into
//! FailedEvents created (within the cap), deleted (replay delivered) or annotated (replay failed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::record::{failed_event_name, label_value, to_record};
use super::{Error, Limits, ReplayKey};
use crate::api::{
    FIELD_MANAGER, FailedEvent, FailedEventSpec, FailureRecord, ReplayOutcome, WebhookSubscription, labels,
};
use crate::delivery::status::StatusBoard;
use crate::event::CloudEvent;
use crate::k8s::apply_status;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::report::Chain;
use crate::store::{QueuedDeadLetter, ReplayResult, Store, StoreError};

/// Turns the store's dead-letter and replay outboxes into FailedEvent changes.
pub struct Writer {
    /// Kubernetes client.
    pub client: Client,
    /// The active subscriptions, whose dead-letter counts are reported.
    pub registry: Registry,
    /// The store holding the dead-letter and replay-result outboxes.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where the dead-letter counts and drops are reported with the delivery status.
    pub board: StatusBoard,
    /// Woken when a dead letter is queued.
    pub dead_letters_waiting: Arc<Notify>,
    /// The FailedEvent controller's watch cache, for counting against the cap.
    pub cache: Cache<FailedEvent>,
    /// The cap.
    pub limits: Limits,
    /// Publishes the Warning Event of a dropped dead letter.
    pub recorder: kube::runtime::events::Recorder,
}

/// How long a FailedEvent this writer created is counted before the watch cache shows it. The
/// watch lags by milliseconds to seconds; one created and deleted before the cache saw it counts
/// against the cap until then, which drops rather than exceeds.
const UNSEEN_FOR: Duration = Duration::from_secs(60);

/// FailedEvents this writer created that the watch cache may not show yet, by subscription UID.
/// Counting only the cache let a burst of dead letters, written in several drains, pass the cap.
#[derive(Default)]
struct Unseen(Vec<(String, ObjectRef<FailedEvent>, Instant)>);

impl Unseen {
    fn created(&mut self, sub_uid: &str, fev: ObjectRef<FailedEvent>) {
        self.0.push((sub_uid.to_string(), fev, Instant::now()));
    }

    /// How many FailedEvents each subscription (by UID) owns: the watch cache's, and those created
    /// here that it does not show yet. Entries the cache shows, or too old to matter, are dropped.
    fn counts(&mut self, cache: &Cache<FailedEvent>) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for fev in cache.state() {
            for owner in fev.owner_references() {
                if owner.kind == "WebhookSubscription" {
                    *counts.entry(owner.uid.clone()).or_insert(0) += 1;
                }
            }
        }
        self.0.retain(|(uid, fev, at)| {
            let unseen = at.elapsed() < UNSEEN_FOR && cache.get(fev).is_none();
            if unseen {
                *counts.entry(uid.clone()).or_insert(0) += 1;
            }
            unseen
        });
        counts
    }
}

impl Writer {
    /// Work the outboxes whenever a dead letter is queued, and every few seconds, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // Counting against the cap needs the existing FailedEvents first.
        tokio::select! {
            _ = stop.cancelled() => return,
            ready = crate::k8s::cache_ready(&self.cache) => if !ready { return },
        }
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut unseen = Unseen::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.dead_letters_waiting.notified() => {}
                _ = tick.tick() => {}
            }
            if let Err(e) = self.drain_dead_letters(&mut unseen).await {
                warn!(error = %Chain(&e), "turning dead letters into FailedEvents; will retry");
            }
            if let Err(e) = self.drain_replays().await {
                warn!(error = %Chain(&e), "applying replay results; will retry");
            }
            let counts = unseen.counts(&self.cache);
            for sub in self.registry.all() {
                let n = counts.get(&sub.uid).copied().unwrap_or(0);
                self.board.dead_letters(
                    &sub.uid,
                    sub.key.namespace.as_deref().unwrap_or_default(),
                    &sub.key.name,
                    n,
                );
            }
        }
    }

    async fn drain_dead_letters(&self, unseen: &mut Unseen) -> Result<(), StoreError> {
        let store = &self.store;
        let letters = store.dead_letters(100).await?;
        if letters.is_empty() {
            return Ok(());
        }
        let mut counts = unseen.counts(&self.cache);
        for letter in letters {
            match self.create(&letter, &mut counts).await {
                Ok(Some(created)) => {
                    unseen.created(&letter.sub_uid, created);
                    store.dead_letter_done(letter.job_id).await?
                }
                Ok(None) => store.dead_letter_done(letter.job_id).await?,
                Err(e) if e.is_permanent() => {
                    warn!(subscription = %letter.letter.subscription, error = %Chain(&e), "dropping a dead letter that cannot become a FailedEvent");
                    self.metrics.dead_lettered(
                        &letter.letter.namespace,
                        &letter.letter.subscription,
                        "unreadable",
                    );
                    self.board.dead_letter_dropped(
                        &letter.sub_uid,
                        &letter.letter.namespace,
                        &letter.letter.subscription,
                    );
                    store.dead_letter_done(letter.job_id).await?
                }
                Err(e) => {
                    warn!(subscription = %letter.letter.subscription, error = %Chain(&e), "creating a FailedEvent; will retry")
                }
            }
        }
        Ok(())
    }

    /// Create the FailedEvent for one dead letter, or drop it at the cap. Returns the FailedEvent
    /// that now exists for it (created here, or before a crash), `None` when none does.
    async fn create(
        &self,
        letter: &QueuedDeadLetter,
        counts: &mut HashMap<String, u64>,
    ) -> Result<Option<ObjectRef<FailedEvent>>, Error> {
        let ns = &letter.letter.namespace;
        let name = &letter.letter.subscription;
        let subs: Api<WebhookSubscription> = Api::namespaced(self.client.clone(), ns);
        let Some(sub) = subs
            .get_opt(name)
            .await
            .map_err(Error::kube("reading the subscription"))?
            .filter(|s| s.uid().as_deref() == Some(letter.sub_uid.as_str()))
        else {
            if self.registry.get_uid(&ObjectRef::new(name).within(ns), &letter.sub_uid).is_some() {
                return Err(Error::NotServed(format!("{ns}/{name}")));
            }
            // The subscription is gone: its FailedEvents would be garbage-collected anyway.
            debug!(subscription = %name, "dropping a dead letter of a deleted subscription");
            self.metrics.dead_lettered(ns, name, "orphaned");
            return Ok(None);
        };
        let count = counts.entry(letter.sub_uid.clone()).or_insert(0);
        if *count >= self.limits.cap {
            self.board.dead_letter_dropped(&letter.sub_uid, ns, name);
            self.metrics.dead_lettered(ns, name, "capped");
            let note = format!(
                "{} FailedEvents exist (the cap): an undeliverable event was dropped; delete or replay FailedEvents",
                self.limits.cap
            );
            let event = Event {
                type_: EventType::Warning,
                reason: "DeadLetterDropped".into(),
                note: Some(note),
                action: "DeadLetter".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &sub.object_ref(&())).await {
                warn!(subscription = %name, error = %Chain(&e), "could not record a Kubernetes Event");
            }
            return Ok(None);
        }
        let event = CloudEvent::from_structured(&letter.event).map_err(Error::UnreadableEvent)?;
        let failure: FailureRecord =
            serde_json::from_str(&letter.letter.failure).map_err(Error::UnreadableFailure)?;
        let fev_name = failed_event_name(name, &letter.sub_uid, &event.source, &event.id);
        let fev = FailedEvent {
            metadata: ObjectMeta {
                name: Some(fev_name.clone()),
                namespace: Some(ns.clone()),
                owner_references: sub.controller_owner_ref(&()).map(|owner| vec![owner]),
                labels: Some(
                    [
                        (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
                        (labels::SUBSCRIPTION.to_string(), label_value(name)),
                        (labels::EVENT_TYPE.to_string(), label_value(&event.type_)),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: FailedEventSpec { subscription: name.clone(), event: to_record(&event), failure },
            status: None,
        };
        let api: Api<FailedEvent> = Api::namespaced(self.client.clone(), ns);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        match api.create(&params, &fev).await {
            Ok(_) => {
                *count += 1;
                self.metrics.dead_lettered(ns, name, "created");
                info!(subscription = %name, failed_event = %fev_name, "FailedEvent created");
                Ok(Some(ObjectRef::new(&fev_name).within(ns)))
            }
            // Created before a crash: the same name means the same event; nothing to do.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(ObjectRef::new(&fev_name).within(ns))),
            Err(source) => Err(Error::Kube { action: "creating the FailedEvent", source }),
        }
    }

    async fn drain_replays(&self) -> Result<(), StoreError> {
        let store = &self.store;
        for result in store.replay_results(100).await? {
            match self.apply_replay(&result).await {
                Ok(()) => store.replay_result_done(result.job_id).await?,
                Err(e) if e.is_permanent() => {
                    warn!(failed_event = %result.replay_of, error = %Chain(&e), "dropping a replay result that names no FailedEvent");
                    store.replay_result_done(result.job_id).await?
                }
                Err(e) => {
                    warn!(failed_event = %result.replay_of, error = %Chain(&e), "applying a replay result; will retry")
                }
            }
        }
        Ok(())
    }

    async fn apply_replay(&self, result: &ReplayResult) -> Result<(), Error> {
        let ReplayKey { namespace, name, uid } = result.replay_of.parse()?;
        let name = name.as_str();
        let api: Api<FailedEvent> = Api::namespaced(self.client.clone(), &namespace);
        let outcome = if result.delivered {
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            api.delete(name, &params).await.map(|_| ())
        } else {
            let status = json!({
                "replay": {
                    "outcome": ReplayOutcome::Failed,
                    "time": jiff::Timestamp::from_millisecond(result.at).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                    "attempts": result.attempts,
                    "lastStatusCode": result.status,
                    "message": result.error.clone().unwrap_or_else(|| "the replay failed again".into()),
                }
            });
            apply_status(&api, name, FIELD_MANAGER, status).await.map(|_| ())
        };
        match outcome {
            Ok(()) => {
                info!(failed_event = %name, delivered = result.delivered, "replay finished");
                Ok(())
            }
            // Deleted meanwhile (or re-created under the same name): nothing left to update.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(source) => Err(Error::Kube { action: "recording the replay result", source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher;

    use super::*;

    fn failed_event(name: &str, sub_uid: &str) -> FailedEvent {
        serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "FailedEvent",
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": [
                {"apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "name": "s", "uid": sub_uid}
            ]},
            "spec": {
                "subscription": "s",
                "event": {"specversion": "1.0", "id": name, "source": "/t", "type": "t"},
                "failure": {"reason": "MaxAttemptsExceeded", "attempts": 1}
            }
        }))
        .expect("a FailedEvent")
    }

    #[test]
    fn a_created_failed_event_counts_once_before_and_after_the_cache_shows_it() {
        let (cache, mut writer) = kube::runtime::reflector::store::<FailedEvent>();
        let mut unseen = Unseen::default();
        writer.apply_watcher_event(&watcher::Event::Apply(failed_event("a", "u1")));
        unseen.created("u1", ObjectRef::new("b").within("ns"));
        assert_eq!(unseen.counts(&cache).get("u1"), Some(&2), "the cache's one and the unseen one");

        writer.apply_watcher_event(&watcher::Event::Apply(failed_event("b", "u1")));
        assert_eq!(unseen.counts(&cache).get("u1"), Some(&2), "seen now: counted once");
        writer.apply_watcher_event(&watcher::Event::Delete(failed_event("b", "u1")));
        assert_eq!(unseen.counts(&cache).get("u1"), Some(&1), "deleted after it was seen");
    }
}
