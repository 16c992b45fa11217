//! The work one replica at a time does for the whole cluster: the FailedEvent controller and the
//! dead-letter writer, the EventTypes' status, and the store's upkeep (delivery-log retention and
//! the deduplication window). With one replica it always runs here; with several, on whichever
//! owns [`CLUSTER_TASKS`], moving when ownership does.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::while_owned;
use crate::controller::event_types;
use crate::deadletter;
use crate::ownership::{CLUSTER_TASKS, Ownership};

/// Everything the cluster-wide tasks are built from; each is started afresh whenever this
/// replica gains [`CLUSTER_TASKS`].
#[derive(Clone)]
pub struct ClusterTasks {
    /// The FailedEvent controller and writer.
    pub dead_letters: deadletter::Parts,
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
        let parts = &self.dead_letters;
        let prune =
            crate::store::prune(parts.store.clone(), self.log_retention, self.dedup_window, lost.clone());
        let event_types = event_types::run_status(
            parts.client.clone(),
            parts.metrics.clone(),
            self.namespace.clone(),
            lost.clone(),
        );
        let dead_letters = self.dead_letters.run(self.namespace, lost);
        tokio::join!(dead_letters, prune, event_types);
    }
}
