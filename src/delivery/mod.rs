//! Delivery: routing accepted events to subscriptions, one dispatcher per subscription, signing,
//! retry decisions, and the status the dispatchers report.

mod attempt;
pub mod budget;
mod cache;
mod dispatcher;
mod job;
mod queue;
pub mod sender;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::event::CloudEvent;
use crate::metrics::Metrics;
use crate::outbound::clients::Clients;
use crate::outbound::secrets::SecretCache;
use crate::ownership::Ownership;
use crate::policy::filter::CelEvent;
use crate::policy::matching::wants;
use crate::registry::{ActiveSubscription, Registry};
use crate::store::{Accepted, JobRef, Millis, NewEvent, PartitionKey, Store, StoreError, now_ms};
use dispatcher::Dispatcher;
use status::StatusBoard;

/// The `type` of test events.
pub const TEST_EVENT_TYPE: &str = "dev.hookline.test";

/// The test event (`TEST_EVENT_TYPE`, a fixed message) sent to the subscription `namespace/name`
/// when no payload is given.
pub fn ping(id: String, namespace: &str, name: &str) -> CloudEvent {
    let data = serde_json::json!({"message": "A test event sent by Hookline", "subscription": name});
    CloudEvent::from_hookline(id, TEST_EVENT_TYPE, namespace, name, &data)
}

/// What dispatchers are built from (see [`Dispatchers::new`]).
pub struct Parts {
    /// The store jobs come from and outcomes go to.
    pub store: Arc<dyn Store>,
    /// HTTP clients per CA bundle.
    pub clients: Clients,
    /// Signing keys and secret headers.
    pub secrets: SecretCache,
    /// Where delivery status is reported.
    pub board: StatusBoard,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Memory for the events of queued jobs, shared by every dispatcher.
    pub budget: Arc<budget::EventBudget>,
    /// Woken when a dead letter is queued for the FailedEvent writer.
    pub dead_letters_waiting: Arc<Notify>,
    /// What this replica owns: it dispatches for those subscriptions only.
    pub ownership: Ownership,
    /// Where new jobs of subscriptions another replica owns go, to be handed over to it (`None`
    /// with one replica).
    pub forward: Option<mpsc::UnboundedSender<(String, JobRef)>>,
    /// Records Kubernetes Events on subscriptions (the circuit breaker's).
    pub recorder: kube::runtime::events::Recorder,
}

/// What every dispatcher shares; private to delivery.
type Shared = Parts;

/// What the store keeps of `event` published in `namespace`: its stored form (`body`, the JSON
/// format) and the subscriptions (by UID) it is to be delivered to.
pub fn to_store(
    namespace: &str,
    event: &CloudEvent,
    body: Vec<u8>,
    targets: Vec<String>,
    accepted_at: Millis,
) -> NewEvent {
    NewEvent {
        namespace: namespace.to_string(),
        source: event.source.clone(),
        event_id: event.id.clone(),
        event_type: event.type_.clone(),
        body,
        targets,
        accepted_at,
        partition: event.partition_key().map(|k| PartitionKey::of(&k)),
    }
}

/// A job handed to a dispatcher, with the event when the caller has it at hand (fresh jobs), so
/// the first attempt needs no read from the store.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The job, as the dispatcher schedules it.
    pub job: JobRef,
    /// The event, when the caller has it (fresh jobs).
    pub event: Option<Arc<CloudEvent>>,
}

struct Handle {
    /// The epoch of the claim the dispatcher runs under.
    epoch: i64,
    /// The [`Ownership::generation`] it started in.
    generation: u64,
    jobs: mpsc::UnboundedSender<NewJob>,
    sub: watch::Sender<Arc<ActiveSubscription>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The set of running dispatchers, kept in line with the [`Registry`].
pub struct Dispatchers {
    shared: Arc<Shared>,
    handles: Mutex<HashMap<String, Handle>>,
}

/// A published event with its stored form (the CloudEvents JSON format), serialized once.
pub struct Incoming {
    /// The parsed event.
    pub event: CloudEvent,
    /// Its stored form.
    pub json: Vec<u8>,
}

impl From<CloudEvent> for Incoming {
    fn from(event: CloudEvent) -> Self {
        let json = event.to_json_bytes();
        Incoming { event, json }
    }
}

/// One event's routing result, for the ingest response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The event's `id`.
    pub id: String,
    /// The event's `source`.
    pub source: String,
    /// How many subscriptions it was queued for.
    pub matched: usize,
    /// It was accepted before (within the dedup window): nothing was queued.
    pub duplicate: bool,
}

impl Dispatchers {
    /// Dispatchers sharing `parts`.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self { shared: Arc::new(parts), handles: Mutex::default() })
    }

    /// Store events for every subscription in `namespace` that wants them, durably, then hand the
    /// new jobs to their dispatchers.
    pub async fn route(
        &self,
        registry: &Registry,
        namespace: &str,
        events: Vec<Incoming>,
    ) -> Result<Vec<Routed>, StoreError> {
        let subs = registry.in_namespace(namespace);
        let accepted_at = now_ms();
        let mut parsed = Vec::with_capacity(events.len());
        let mut new = Vec::with_capacity(events.len());
        for Incoming { event: ev, json } in events {
            let seen = CelEvent::new(&ev);
            let targets = subs
                .iter()
                .filter(|s| match wants(&s.spec, s.filter.as_deref(), &seen) {
                    Ok(wanted) => wanted,
                    Err(error) => {
                        self.shared.metrics.filter_failed(&s.key.namespace.clone().unwrap_or_default(), &s.key.name);
                        debug!(subscription = %s.key, event = %ev.id, %error, "the CEL filter failed on an event: no match");
                        false
                    }
                })
                .map(|s| s.uid.clone())
                .collect();
            drop(seen);
            let stored = to_store(namespace, &ev, json, targets, accepted_at);
            parsed.push((ev, stored.partition));
            new.push(stored);
        }
        let accepted: Vec<Accepted> = self.shared.store.accept(new).await?;
        let mut routed = Vec::with_capacity(accepted.len());
        for ((ev, partition), acc) in parsed.into_iter().zip(accepted) {
            routed.push(Routed {
                id: ev.id.clone(),
                source: ev.source.clone(),
                matched: acc.jobs.len(),
                duplicate: acc.duplicate,
            });
            self.shared.metrics.event_accepted(acc.duplicate);
            let event = Arc::new(ev);
            for (uid, job_id) in &acc.jobs {
                let job = JobRef { due_at: accepted_at, job_id: *job_id, accepted_at, partition };
                self.hand_over(uid, NewJob { job, event: Some(event.clone()) });
            }
        }
        Ok(routed)
    }

    /// Queue a test event for one subscription only; the event's id makes it idempotent (a
    /// repeated id within the dedup window is not queued again). Returns how many jobs were
    /// queued (0 or 1).
    pub async fn send_test(
        &self,
        namespace: &str,
        uid: &str,
        event: &CloudEvent,
    ) -> Result<usize, StoreError> {
        let accepted_at = now_ms();
        let body = event.to_json_bytes();
        let new = to_store(namespace, event, body, vec![uid.to_string()], accepted_at);
        let accepted = self.shared.store.accept(vec![new]).await?;
        let jobs = accepted.into_iter().flat_map(|a| a.jobs).collect::<Vec<_>>();
        for (uid, job_id) in &jobs {
            self.notify(uid, JobRef { due_at: accepted_at, job_id: *job_id, accepted_at, partition: None });
        }
        Ok(jobs.len())
    }

    /// Hand a new job to its dispatcher (a dispatcher that starts later loads it from the store).
    pub fn notify(&self, uid: &str, job: JobRef) {
        self.hand_over(uid, NewJob { job, event: None });
    }

    /// Hand a job to its dispatcher here, or to the replica that owns its subscription. A
    /// dispatcher that is not running yet loads the job from the store when it starts.
    fn hand_over(&self, uid: &str, job: NewJob) {
        if let Some(h) = self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(uid) {
            let _ = h.jobs.send(job);
            return;
        }
        if let Some(forward) = &self.shared.forward
            && !self.shared.ownership.owns(uid)
        {
            let _ = forward.send((uid.to_string(), job.job));
        }
    }

    /// Start, update and stop dispatchers as the registry and what this replica owns change,
    /// until `stop`.
    pub async fn run(self: Arc<Self>, registry: Registry, stop: CancellationToken) {
        let mut changes = registry.subscribe();
        let mut owned = self.shared.ownership.subscribe();
        loop {
            let ownership = &self.shared.ownership;
            let mine: Vec<_> =
                registry.all().into_iter().filter_map(|s| Some((ownership.epoch(&s.uid)?, s))).collect();
            self.sync(&mine, &stop);
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                changed = owned.changed() => if changed.is_err() { break },
            }
        }
        let handles: Vec<Handle> =
            self.handles.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, h)| h).collect();
        for h in handles {
            h.stop.cancel();
            let _ = h.task.await;
        }
        info!("dispatchers stopped");
    }

    /// Run a dispatcher for each of `subs` (with the epoch this replica owns it under), and no
    /// other: a dispatcher whose subscription went, or is owned under another epoch, stops.
    fn sync(&self, subs: &[(i64, Arc<ActiveSubscription>)], stop: &CancellationToken) {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let ownership = &self.shared.ownership;
        let generation = ownership.generation();
        let stale: Vec<String> = handles
            .iter()
            .filter(|(uid, h)| {
                h.generation != generation
                    || !subs.iter().any(|(epoch, s)| &s.uid == *uid && *epoch == h.epoch)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(h) = handles.remove(&uid) {
                h.stop.cancel();
                self.shared.board.remove(&uid);
            }
        }
        for (epoch, sub) in subs {
            match handles.get(&sub.uid) {
                Some(h) => {
                    h.sub.send_if_modified(|current| {
                        let changed = **current != **sub;
                        if changed {
                            *current = sub.clone();
                        }
                        changed
                    });
                }
                // A stopped dispatcher of it is still finishing its in-flight attempts: the new
                // one starts once they are recorded (this runs again then).
                None if ownership.is_running(&sub.uid) => {}
                None => {
                    let (jobs, jobs_rx) = mpsc::unbounded_channel();
                    let (sub_tx, sub_rx) = watch::channel(sub.clone());
                    let child = stop.child_token();
                    let dispatcher = Dispatcher {
                        shared: self.shared.clone(),
                        sub: sub_rx,
                        jobs: jobs_rx,
                        stop: child.clone(),
                        running: self.shared.ownership.running(&sub.uid),
                    };
                    let task = tokio::spawn(dispatcher.run());
                    handles.insert(
                        sub.uid.clone(),
                        Handle { jobs, sub: sub_tx, stop: child, task, epoch: *epoch, generation },
                    );
                }
            }
        }
    }
}
