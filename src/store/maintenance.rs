//! The store's own upkeep: forgetting what no one needs any more, in bounded rounds.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Store, now_ms};
use crate::report::Chain;

/// Forget old delivery-log entries and finished events past the dedup window, every minute.
pub async fn prune(store: Arc<dyn Store>, retention: Duration, dedup: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // In bounded rounds, so publishes and attempt records interleave with a large prune.
        const ROUND: u32 = 2_000;
        let now = now_ms();
        let (log_before, events_before) =
            (now - retention.as_millis() as i64, now - dedup.as_millis() as i64);
        loop {
            match store.prune(log_before, events_before, ROUND).await {
                Ok(n) if n >= u64::from(ROUND) && !stop.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %Chain(&e), "pruning the store");
                    break;
                }
            }
        }
    }
}
