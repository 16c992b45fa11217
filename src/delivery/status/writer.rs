//! The delivery-status writer: one budget of writes per second for every subscription this
//! process delivers for. A `Healthy` transition is written first, within a tick; counters and
//! `lastDelivery` are refreshed in turn as the budget allows, at most once per interval each, so
//! a subscription's delivery status is at most max(interval, busy subscriptions / budget) old.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{DELIVERY_FIELD_MANAGER, Picked, StatusBoard, status_patch};
use crate::api::{DeliveryStats, WebhookSubscription};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::registry::Registry;
use crate::report::Chain;

/// How often the writer looks for work: the promptness of a `Healthy` transition.
const TICK: Duration = Duration::from_millis(200);

/// How much the delivery-status writer may write.
#[derive(Clone, Copy, Debug)]
pub struct WriteBudget {
    /// Least time between two writes of one subscription (`--status-interval`).
    pub interval: Duration,
    /// Writes per second across all subscriptions (`--status-writes-per-second`); up to one
    /// second's worth may go at once.
    pub per_second: f64,
}

/// Tokens for writes, refilled at the budget's rate.
struct Bucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        let capacity = rate.max(1.0);
        Bucket { tokens: capacity, capacity, rate, refilled: now }
    }

    /// Whole writes available at `now`.
    fn available(&mut self, now: Instant) -> usize {
        self.tokens = (self.tokens + (now - self.refilled).as_secs_f64() * self.rate).min(self.capacity);
        self.refilled = now;
        self.tokens.max(0.0).floor() as usize
    }

    fn spend(&mut self, writes: usize) {
        self.tokens -= writes as f64;
    }
}

/// Write what the board has within `budget` until cancelled; then everything left, once, so that
/// a shutdown loses no counts.
pub async fn run_writer(
    board: StatusBoard,
    client: Client,
    metrics: Arc<Metrics>,
    registry: Registry,
    ownership: Ownership,
    budget: WriteBudget,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bucket = Bucket::new(budget.per_second, Instant::now());
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.cancelled() => true,
        };
        let now = Instant::now();
        let picked = if stopping {
            let writes = board.take_dirty().into_iter().map(|(uid, _)| (uid, false)).collect();
            Picked { writes, ..Picked::default() }
        } else {
            board.pick(bucket.available(now), budget.interval, now)
        };
        bucket.spend(picked.writes.len());
        metrics.status_writes_deferred(picked.newly_deferred);
        metrics.set_status_staleness(picked.oldest.map_or(Duration::ZERO, |t| now - t));
        for (uid, urgent) in picked.writes {
            write(&board, &client, &metrics, (&registry, &ownership), &uid, urgent).await;
        }
        if stopping {
            return;
        }
    }
}

/// Write one subscription's delivery status; on failure it is written again later. A subscription
/// the registry no longer has (deleted, or its spec turned invalid) is forgotten instead.
async fn write(
    board: &StatusBoard,
    client: &Client,
    metrics: &Metrics,
    (registry, ownership): (&Registry, &Ownership),
    uid: &str,
    urgent: bool,
) {
    let Some(tracker) = board.trackers.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned() else {
        return;
    };
    // Gone, or delivered by another replica now: that replica writes its status (attempts that
    // ended here after the hand-over are in the delivery log, not in these counters).
    if registry.get_uid(&ObjectRef::new(&tracker.name).within(&tracker.namespace), uid).is_none()
        || !ownership.owns(uid)
    {
        board.remove(uid);
        return;
    }
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &tracker.namespace);
    let tracker = if tracker.base.is_some() {
        tracker
    } else {
        // Counters continue from what status held when this process started.
        match api.get_opt(&tracker.name).await {
            Ok(Some(sub)) => {
                let status = sub.status.unwrap_or_default();
                let base = status.delivery_stats.unwrap_or_default();
                let dropped = status.dead_letters.map_or(0, |d| d.dropped);
                let base = DeliveryStats { pending: 0, consecutive_failures: 0, ..base };
                board.set_base(uid, base, dropped, status.disabled);
            }
            // The registry has it: the API server is not serving it yet (starting up).
            Ok(None) => {
                board.mark_dirty(uid, urgent);
                return;
            }
            Err(e) => {
                warn!(subscription = %tracker.name, error = %Chain(&e), "reading status before the first write");
                board.mark_dirty(uid, urgent);
                return;
            }
        }
        let Some(tracker) = board.trackers.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned() else {
            return;
        };
        tracker
    };
    let params = PatchParams::apply(DELIVERY_FIELD_MANAGER).force();
    match api.patch_status(&tracker.name, &params, &Patch::Apply(status_patch(&tracker))).await {
        Ok(_) => {
            metrics.status_written();
            debug!(subscription = %tracker.name, "delivery status written");
        }
        // Not "deleted" (the registry says it exists): an API server that is starting answers 404
        // until it serves the group again. Forgetting the counts here lost them.
        Err(e) => {
            metrics.status_write_failed("delivery");
            warn!(subscription = %tracker.name, error = %Chain(&e), "writing delivery status; will retry");
            board.mark_dirty(uid, urgent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_one_second() {
        let start = Instant::now();
        let mut b = Bucket::new(10.0, start);
        assert_eq!(b.available(start), 10);
        b.spend(10);
        assert_eq!(b.available(start + Duration::from_millis(250)), 2);
        assert_eq!(b.available(start + Duration::from_secs(60)), 10, "no more than a second's worth");
        let mut slow = Bucket::new(0.5, start);
        assert_eq!(slow.available(start), 1, "at least one write");
        slow.spend(1);
        assert_eq!(slow.available(start + Duration::from_secs(1)), 0);
        assert_eq!(slow.available(start + Duration::from_secs(2)), 1);
    }

    /// A client whose every request gets `status` with a Kubernetes `Status` body, counting them.
    fn answering(status: u16) -> (Client, tokio::task::JoinHandle<usize>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut served = 0;
            while let Some((_, send)) = handle.next_request().await {
                served += 1;
                let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": status, "message": "the server could not find the requested resource"});
                let response =
                    Response::builder().status(status).body(Body::from(body.to_string().into_bytes()));
                send.send_response(response.expect("response"));
            }
            served
        });
        (Client::new(service, "default"), server)
    }

    #[tokio::test]
    async fn a_404_while_the_registry_has_the_subscription_keeps_its_counts_for_later() {
        use crate::policy::decision::Gate;
        use crate::registry::ActiveSubscription;
        let board = StatusBoard::default();
        let report = |success| super::super::AttemptReport {
            last: crate::api::LastDelivery {
                event_id: "e".into(),
                event_type: "t".into(),
                attempt: 1,
                time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                success,
                status_code: Some(200),
                duration_ms: 1,
                error: None,
            },
            gave_up: false,
            gone: false,
            generation: 1,
            enable: None,
            disable_after: None,
        };
        board.attempt("uid-s", "ns", "s", report(true));
        board.set_base("uid-s", DeliveryStats::default(), 0, None);
        let registry = Registry::default();
        registry.upsert(ActiveSubscription::test("ns", "s", Gate::Open));
        let (client, server) = answering(404);
        let metrics = Metrics::default();
        let solo = Ownership::solo();
        write(&board, &client, &metrics, (&registry, &solo), "uid-s", false).await;
        let tracker = board.trackers.lock().expect("lock").get("uid-s").cloned().expect("still tracked");
        assert!(tracker.dirty, "written again later");
        assert_eq!(tracker.local.delivered, 1, "the count is kept");

        // Once the registry no longer has it, the tracker is forgotten without a request.
        registry.remove(&ObjectRef::new("s").within("ns"));
        write(&board, &client, &metrics, (&registry, &solo), "uid-s", false).await;
        assert!(board.trackers.lock().expect("lock").get("uid-s").is_none());

        // Nor does a replica write for a subscription another replica delivers now.
        registry.upsert(ActiveSubscription::test("ns", "s", Gate::Open));
        board.attempt("uid-s", "ns", "s", report(true));
        let elsewhere = Ownership::shared("replica-a".into());
        write(&board, &client, &metrics, (&registry, &elsewhere), "uid-s", false).await;
        assert!(board.trackers.lock().expect("lock").get("uid-s").is_none());
        drop(client);
        assert_eq!(server.await.expect("server"), 1, "one PATCH, none for the forgotten ones");
    }
}
