//! Dead letters: events a subscription could not deliver become `FailedEvent` resources, bounded
//! by a per-subscription cap and a TTL, and replayable with an annotation.
//!
//! The store's outbox makes creation exactly-once: the last attempt and the dead letter are one
//! commit; the FailedEvent's name is derived from the event, so a crash before the outbox row is
//! cleared re-creates nothing (409) and loses nothing.

mod controller;
pub mod record;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use controller::FailedEventContext;
pub use writer::Writer;

use crate::api::{FailedEvent, WebhookSubscription};
use crate::delivery::Dispatchers;
use crate::delivery::status::StatusBoard;
use crate::event::EventError;
use crate::metrics::Metrics;
use crate::registry::{Readiness, Registry};
use crate::store::{Store, StoreError};

/// What the FailedEvent controller and the dead-letter writer are built from.
#[derive(Clone)]
pub struct Parts {
    /// Kubernetes client.
    pub client: Client,
    /// The active subscriptions: replays go to them, their dead-letter counts are reported.
    pub registry: Registry,
    /// Whether the registry holds every subscription yet (a replay waits until it does).
    pub readiness: Readiness,
    /// The dead-letter and replay-result outboxes; where replays are queued.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Hands a replay to its subscription's dispatcher.
    pub dispatchers: Arc<Dispatchers>,
    /// Where dead-letter counts and drops are reported with the delivery status.
    pub board: StatusBoard,
    /// Woken when a dead letter is queued.
    pub dead_letters_waiting: Arc<Notify>,
    /// The cap and the TTL.
    pub limits: Limits,
}

impl Parts {
    /// Run the FailedEvent controller (TTL, replays) and the writer (the outbox into
    /// FailedEvents, within the cap) over `namespace` (default: all) until `stop`.
    pub async fn run(self, namespace: Option<String>, stop: CancellationToken) {
        let context = Arc::new(FailedEventContext { parts: self.clone(), backoff: Default::default() });
        let (cache, controller) = controller::run(context, namespace, stop.clone().cancelled_owned());
        let writer = Writer {
            recorder: Recorder::new(self.client.clone(), crate::k8s::reporter()),
            client: self.client,
            registry: self.registry,
            store: self.store,
            metrics: self.metrics,
            board: self.board,
            dead_letters_waiting: self.dead_letters_waiting,
            cache,
            limits: self.limits,
        };
        tokio::join!(controller, writer.run(stop));
    }
}

/// Bounds on FailedEvents.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// FailedEvents kept per subscription; more are dropped and counted.
    pub cap: u64,
    /// FailedEvents older than this are deleted.
    pub ttl: Duration,
}

/// Why a dead letter, a replay request or a replay result could not be carried out.
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
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] StoreError),
    /// The event kept with a dead letter does not parse (the store was damaged).
    #[error("the stored event is unreadable")]
    UnreadableEvent(#[source] EventError),
    /// The failure record kept with a dead letter does not parse (the store was damaged).
    #[error("the stored failure record is unreadable")]
    UnreadableFailure(#[source] serde_json::Error),
    /// The API server answers that the subscription does not exist while Hookline's registry
    /// (fed by its watch) still has it: an API server that is starting up.
    #[error("the API server does not serve subscription {0} yet")]
    NotServed(String),
    /// A replay result names its FailedEvent with a key that is not `namespace/name/uid`.
    #[error("{0:?} is not a replay key (namespace/name/uid)")]
    ReplayKey(String),
}

impl Error {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "failed_event_kube_api",
            Error::Store(_) => "failed_event_store",
            Error::UnreadableEvent(_) | Error::UnreadableFailure(_) => "failed_event_unreadable",
            Error::ReplayKey(_) => "failed_event_replay_key",
            Error::NotServed(_) => "failed_event_not_served",
        }
    }

    /// Whether trying again can help: damaged data stays damaged.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::UnreadableEvent(_) | Error::UnreadableFailure(_) | Error::ReplayKey(_))
    }

    fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// The key a replay job carries to find its FailedEvent again: the UID tells a FailedEvent
/// deleted and re-created under the same name from the one replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayKey {
    /// The FailedEvent's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
}

impl ReplayKey {
    /// The key of `fev`.
    pub fn of(fev: &FailedEvent) -> Self {
        ReplayKey {
            namespace: fev.namespace().unwrap_or_default(),
            name: fev.name_any(),
            uid: fev.uid().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.uid)
    }
}

impl FromStr for ReplayKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // Namespaces, names and UIDs never hold a `/`.
        match s.split('/').collect::<Vec<_>>()[..] {
            [namespace, name, uid] if !namespace.is_empty() && !name.is_empty() && !uid.is_empty() => {
                Ok(ReplayKey { namespace: namespace.into(), name: name.into(), uid: uid.into() })
            }
            _ => Err(Error::ReplayKey(s.to_string())),
        }
    }
}

/// The subscription a FailedEvent belongs to.
pub fn subscription_ref(fev: &FailedEvent) -> ObjectRef<WebhookSubscription> {
    ObjectRef::new(&fev.spec.subscription).within(&fev.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keys_round_trip_and_malformed_ones_are_refused() {
        let key = ReplayKey { namespace: "shop".into(), name: "orders-1a2b".into(), uid: "u-1".into() };
        assert_eq!(key.to_string().parse::<ReplayKey>().expect("parses"), key);
        for bad in ["", "shop/orders", "shop//u-1", "a/b/c/d"] {
            assert!(matches!(bad.parse::<ReplayKey>(), Err(Error::ReplayKey(_))), "{bad:?}");
        }
    }
}
