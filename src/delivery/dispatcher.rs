//! One dispatcher per subscription: it keeps the subscription's due jobs in time order and sends
//! them, at most `maxConcurrency` at once and within the rate limit, while the gate is open. What
//! to do next is decided by its [`Queue`]; this loop carries it out and reports the queue's depth.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::attempt::{attempt, check_earlier, expire, read_ahead, unreadable};
use super::job::Finished;
use super::queue::{HealthChange, Queue, Start};
use super::{NewJob, Shared};
use crate::api::WebhookSubscription;
use crate::ownership::Running;
use crate::registry::ActiveSubscription;
use crate::report::Chain;
use crate::store::{Millis, now_ms};

/// A subscription's dispatcher; see the module docs.
pub struct Dispatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) sub: watch::Receiver<Arc<ActiveSubscription>>,
    pub(super) jobs: mpsc::UnboundedReceiver<NewJob>,
    pub(super) stop: CancellationToken,
    /// Marks the subscription's work as running here until the dispatcher and its in-flight
    /// attempts are done (then another replica may take it over).
    pub(super) running: Running,
}

/// How often the age of the oldest waiting event is brought up to date.
const AGE_EVERY: Duration = Duration::from_secs(5);

/// How often jobs held behind a closed gate are checked against their TTL.
const HELD_SWEEP: Duration = Duration::from_secs(15);

impl Dispatcher {
    /// Run until stopped or the subscription goes away; in-flight attempts are awaited.
    pub async fn run(mut self) {
        let first = self.sub.borrow().clone();
        let (uid, ns, name) =
            (first.uid.clone(), first.key.namespace.clone().unwrap_or_default(), first.key.name.clone());
        let Some((mut queue, mut loaded)) = self.load(&uid, &name).await else { return };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut sweep = tokio::time::interval(HELD_SWEEP);
        // The oldest waiting event's age is a walk over the queue: looked at every few seconds.
        let mut age_tick = tokio::time::interval(AGE_EVERY);
        age_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut oldest: Option<Millis> = None;
        self.shared.metrics.set_circuit_open(&ns, &name, false);
        loop {
            let sub = self.sub.borrow().clone();
            let now = now_ms();
            let plan = queue.plan(&sub, now, Instant::now());
            for change in queue.take_changes() {
                self.show(&sub, change);
            }
            for start in plan.start {
                let (shared, sub, done) = (self.shared.clone(), sub.clone(), done_tx.clone());
                match start {
                    Start::Attempt(job, event) => tokio::spawn(attempt(shared, sub, job, event, done)),
                    Start::Unreadable(job, error) => tokio::spawn(unreadable(shared, sub, job, error, done)),
                };
            }
            if !plan.read.is_empty() {
                tokio::spawn(read_ahead(self.shared.clone(), plan.read, done_tx.clone()));
            }
            if !plan.check.is_empty() {
                let question = queue.question(&plan.check);
                let check =
                    check_earlier(self.shared.clone(), uid.clone(), plan.check, question, done_tx.clone());
                tokio::spawn(check);
            }
            let depth = queue.depth() as u64;
            let next_retry = queue.next_retry(now).and_then(time);
            self.shared.board.queue(&uid, &ns, &name, depth, next_retry);
            oldest = oldest.filter(|_| queue.has_waiting());
            let age = oldest.map_or(0, |at| now.saturating_sub(at).max(0));
            self.shared.metrics.set_queue(&ns, &name, depth as i64, Duration::from_millis(age as u64));

            tokio::select! {
                _ = self.stop.cancelled() => break,
                job = self.jobs.recv() => match job {
                    // Handed over while the queue was loading, and loaded with it: queued already.
                    Some(job) if loaded.take(job.job.job_id) => {}
                    Some(job) => queue.admit(job),
                    None => break,
                },
                changed = self.sub.changed() => if changed.is_err() { break },
                Some(finished) = done_rx.recv() => {
                    queue.finished(&sub, finished);
                    for change in queue.take_changes() {
                        self.show(&sub, change);
                    }
                }
                _ = tokio::time::sleep(plan.wake.unwrap_or_default()), if plan.wake.is_some() => {}
                // An empty queue has no age to bring up to date: idle dispatchers stay asleep.
                _ = age_tick.tick(), if queue.has_waiting() => oldest = queue.oldest_waiting(),
                _ = sweep.tick(), if !queue.is_sending(&sub) => {
                    let expired = queue.expired(sub.schedule.event_ttl, now);
                    if !expired.is_empty() {
                        tokio::spawn(expire(self.shared.clone(), sub, expired, done_tx.clone()));
                    }
                }
            }
        }
        // Let in-flight attempts finish and record their outcome; what is queued stays in the store.
        drop(done_tx);
        let sub = self.sub.borrow().clone();
        while queue.outstanding() > 0 {
            match done_rx.recv().await {
                Some(finished) => queue.finished(&sub, finished),
                None => break,
            }
        }
        self.shared.metrics.forget_queue(&ns, &name);
        debug!(subscription = %name, "dispatcher stopped");
        drop(self.running);
    }

    /// Show a change of the endpoint's health: the circuit breaker's in the `Healthy` condition
    /// and the `hookline_circuit_open` gauge; each as a Kubernetes Event.
    fn show(&self, sub: &ActiveSubscription, change: HealthChange) {
        let (ns, name) = (sub.key.namespace.as_deref().unwrap_or_default(), sub.key.name.as_str());
        let (type_, reason, note) = match change {
            HealthChange::Opened { failures, error, probe_in } => {
                let probe = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::try_from(probe_in).unwrap_or_default())
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                let note = format!(
                    "{failures} attempts in a row failed, the last with {error}: nothing is sent to the endpoint \
                     until a probe at {probe:.0}"
                );
                self.circuit(sub, Some(&note));
                (EventType::Warning, "CircuitOpened", note)
            }
            HealthChange::Closed => {
                self.circuit(sub, None);
                (EventType::Normal, "CircuitClosed", "The endpoint answered a probe: delivery resumes".into())
            }
            HealthChange::Disabled(d) => {
                let note = format!(
                    "{}: delivery is disabled; set the annotation {} to a new value, or change the spec, to \
                     deliver again",
                    d.message,
                    crate::api::annotations::ENABLE
                );
                (EventType::Warning, "Disabled", note)
            }
        };
        info!(subscription = %name, reason, "{note}");
        let recorder = self.shared.recorder.clone();
        let reference = ObjectReference {
            api_version: Some(WebhookSubscription::api_version(&()).into_owned()),
            kind: Some(WebhookSubscription::kind(&()).into_owned()),
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            uid: Some(sub.uid.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Deliver".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %Chain(&e), "could not record a Kubernetes Event");
            }
        });
    }

    /// The circuit breaker opened (`Some`: why) or closed: the `Healthy` condition and the gauge.
    fn circuit(&self, sub: &ActiveSubscription, open: Option<&str>) {
        let (ns, name) = (sub.key.namespace.as_deref().unwrap_or_default(), sub.key.name.as_str());
        self.shared.metrics.set_circuit_open(ns, name, open.is_some());
        self.shared.board.circuit(&sub.uid, ns, name, open.map(str::to_string), sub.generation);
    }

    /// The queue of the jobs the store holds for this subscription, read until it succeeds or
    /// the dispatcher is stopped; with the ids it read, to tell jobs handed over meanwhile.
    async fn load(&self, uid: &str, name: &str) -> Option<(Queue, Loaded)> {
        loop {
            match self.shared.store.pending(uid).await {
                Ok(jobs) => {
                    debug!(subscription = %name, queued = jobs.len(), "dispatcher started");
                    let loaded = Loaded { ids: jobs.iter().map(|j| j.job_id).collect(), at: Instant::now() };
                    // With several replicas an ordered job can arrive before an earlier one of
                    // its lane that another replica accepted: the store is asked first.
                    let check = !self.shared.ownership.is_solo();
                    let queue = Queue::new(jobs, self.shared.budget.account(), Instant::now(), check);
                    return Some((queue, loaded));
                }
                Err(e) => {
                    self.shared.metrics.store_failed(e.metric_label());
                    warn!(subscription = %name, error = %Chain(&e), "loading queued jobs; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// The jobs a dispatcher loaded when it started. A job handed over (from this replica's ingest,
/// or another's) can arrive after the load read it; it is queued already and must not be twice.
/// Hand-overs arrive within moments, so the ids are forgotten after [`Loaded::KEPT`].
struct Loaded {
    ids: HashSet<i64>,
    at: Instant,
}

impl Loaded {
    const KEPT: Duration = Duration::from_secs(60);

    /// Whether `id` was loaded (and so is queued already); forgets it.
    fn take(&mut self, id: i64) -> bool {
        if self.at.elapsed() > Self::KEPT {
            self.ids = HashSet::new();
        }
        self.ids.remove(&id)
    }
}

fn time(ms: Millis) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}
