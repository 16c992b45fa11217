//! The work one replica at a time does for the whole cluster: the FailedEvent controller and the
//! dead-letter writer, the EventTypes' status, and the store's upkeep (delivery-log retention and
//! the deduplication window). With one replica it always runs here; with several, on whichever
//! owns [`CLUSTER_TASKS`], moving when ownership does.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::while_owned;
use crate::controller::event_types;
use crate::deadletter::{self, FailedEventContext, Limits};
use crate::delivery::Dispatchers;
use crate::delivery::status::StatusBoard;
use crate::metrics::Metrics;
use crate::ownership::{CLUSTER_TASKS, Ownership};
use crate::registry::{Readiness, Registry};
use crate::store::Store;

/// Everything the cluster-wide tasks are built from; each is started afresh whenever this
/// replica gains [`CLUSTER_TASKS`].
#[derive(Clone)]
pub struct ClusterTasks {
    /// Kubernetes client.
    pub client: Client,
    /// The active subscriptions (replays go to them; their dead-letter counts are reported).
    pub registry: Registry,
    /// Whether the registry holds every subscription yet.
    pub readiness: Readiness,
    /// The store: the dead-letter and replay-result outboxes, the log and dedup records.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Hands replays to their subscriptions' dispatchers.
    pub dispatchers: Arc<Dispatchers>,
    /// Where dead-letter counts are reported with the delivery status.
    pub board: StatusBoard,
    /// Woken when a dead letter is queued.
    pub dead_letters_waiting: Arc<Notify>,
    /// The FailedEvent cap and TTL.
    pub limits: Limits,
    /// Only this namespace (default: all).
    pub namespace: Option<String>,
    /// How long delivery attempts stay in the log.
    pub log_retention: Duration,
    /// How long a published `source` + `id` is remembered.
    pub dedup_window: Duration,
}

impl ClusterTasks {
    /// Run the tasks whenever this replica owns them, until `stop`.
    pub async fn run(self, ownership: Ownership, stop: CancellationToken) {
        while_owned(ownership, CLUSTER_TASKS, stop, |lost| self.clone().run_once(lost)).await;
    }

    /// One term of ownership: every task, until `lost`.
    async fn run_once(self, lost: CancellationToken) {
        let fev_ctx = Arc::new(FailedEventContext {
            client: self.client.clone(),
            registry: self.registry.clone(),
            readiness: self.readiness,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            dispatchers: self.dispatchers,
            limits: self.limits,
            backoff: Default::default(),
        });
        let (cache, failed_events) =
            deadletter::run_controller(fev_ctx, self.namespace.clone(), lost.clone().cancelled_owned());
        let writer = deadletter::Writer {
            client: self.client.clone(),
            registry: self.registry,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            board: self.board,
            dead_letters_waiting: self.dead_letters_waiting,
            cache,
            limits: self.limits,
            recorder: Recorder::new(self.client.clone(), crate::k8s::reporter()),
        };
        let prune = crate::store::prune(self.store, self.log_retention, self.dedup_window, lost.clone());
        let event_types = event_types::run_status(self.client, self.metrics, self.namespace, lost.clone());
        tokio::join!(failed_events, writer.run(lost), prune, event_types);
    }
}
