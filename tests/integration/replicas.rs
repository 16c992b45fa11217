//! Three Hooklines sharing one PostgreSQL database, as a Deployment with `replicas: 3` runs them:
//! a publisher spreads events over all three while one replica after another is killed with
//! `kill -9`, then each in turn is stopped with SIGTERM and restarted (a rolling restart).
//! Nothing accepted may be lost, no endpoint may see more requests at once than its
//! `maxConcurrency`, and every undeliverable event must become exactly one FailedEvent. And
//! PostgreSQL itself going away under load: publishes are refused with 503 meanwhile, and
//! everything accepted is delivered once it is back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::builder::TestSubscription;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{
    Hookline, LOCAL, POSTGRES, PrivatePostgres, StoreAt, TestEnv, fresh_database_on, http_get, publish_batch,
    wait_until,
};
use hookline::api::{FailedEvent, WebhookSubscription};
use kube::api::ListParams;

const REPLICAS: usize = 3;
/// The good subscriptions' `maxConcurrency`.
const CONCURRENCY: u32 = 2;
const WAIT: Duration = Duration::from_secs(60);

/// Which replicas take publishes now, and a count of their ups and downs (a publish to a replica
/// counts as failed only if nothing happened to the replica meanwhile).
#[derive(Default)]
struct Roster {
    ingest: Vec<Option<String>>,
    changes: Vec<u64>,
}

/// What the publisher saw.
#[derive(Default)]
struct Published {
    good: Vec<String>,
    bad: Vec<String>,
    /// Publishes refused by a replica that was up before and after the request.
    failures: Vec<String>,
}

struct Replicas<'a> {
    env: &'a TestEnv,
    store: StoreAt,
    running: Vec<Option<Hookline>>,
    roster: Arc<Mutex<Roster>>,
}

impl Replicas<'_> {
    async fn start(&mut self, i: usize) {
        let name = format!("--replica-name=r{i}");
        let mut flags: Vec<&str> = LOCAL.to_vec();
        flags.push(&name);
        let h = self.env.start_hookline_in(&self.store, &flags).await;
        let mut roster = self.roster.lock().expect("roster");
        roster.ingest[i] = Some(h.ingest.clone());
        roster.changes[i] += 1;
        drop(roster);
        self.running[i] = Some(h);
    }

    /// Take replica `i` out of the publisher's rotation, and return it.
    fn take(&mut self, i: usize) -> Hookline {
        let mut roster = self.roster.lock().expect("roster");
        roster.ingest[i] = None;
        roster.changes[i] += 1;
        drop(roster);
        self.running[i].take().expect("replica running")
    }
}

/// Publish batches of five events (one in four batches has an undeliverable one) round-robin to
/// the replicas in the roster, ten batches a second, until `stop`.
async fn publish(ns: String, roster: Arc<Mutex<Roster>>, stop: Arc<AtomicBool>) -> Published {
    let client = reqwest::Client::new();
    let mut out = Published::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for n in 0usize.. {
        tick.tick().await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let target = {
            let roster = roster.lock().expect("roster");
            let up: Vec<usize> = (0..REPLICAS).filter(|i| roster.ingest[*i].is_some()).collect();
            up.get(n % up.len().max(1))
                .map(|&i| (i, roster.ingest[i].clone().unwrap_or_default(), roster.changes[i]))
        };
        let Some((i, ingest, changes)) = target else { continue };
        let bad = n % 4 == 0;
        let events: Vec<(String, &str)> =
            (0..5).map(|k| (format!("e{n}-{k}"), if bad && k == 0 { "t.bad" } else { "t.good" })).collect();
        match publish_batch(&client, &ingest, &ns, "/replicas", &events).await {
            202 => {
                for (id, type_) in events {
                    if type_ == "t.bad" { out.bad.push(id) } else { out.good.push(id) }
                }
            }
            other => {
                let roster = roster.lock().expect("roster");
                if roster.changes[i] == changes && roster.ingest[i].is_some() {
                    out.failures.push(format!("replica r{i}: {other:?}"));
                }
            }
        }
    }
    out
}

/// Wait until every receiver got at least one more request than `before`.
async fn deliveries_resume(receivers: &[Receiver], what: &str) {
    let before: Vec<usize> = receivers.iter().map(|r| r.received().len()).collect();
    wait_until(what, WAIT, || async {
        receivers.iter().zip(&before).all(|(r, n)| r.received().len() > *n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_nothing_through_kills_and_a_rolling_restart() {
    let env = TestEnv::with_crds_on("replicas", POSTGRES).await;
    let store = env.new_store().await;
    let roster = Arc::new(Mutex::new(Roster { ingest: vec![None; REPLICAS], changes: vec![0; REPLICAS] }));
    let mut replicas = Replicas { env: &env, store, running: (0..REPLICAS).map(|_| None).collect(), roster };
    for i in 0..REPLICAS {
        replicas.start(i).await;
    }

    let good: Vec<Receiver> = futures::future::join_all((0..3).map(|_| Receiver::start())).await;
    for rx in &good {
        rx.set_default(Reply::Delay(Duration::from_millis(5)));
    }
    let failing = Receiver::start().await;
    failing.set_default(Reply::Status(500));
    for (i, rx) in good.iter().enumerate() {
        let sub = WebhookSubscription::test(&format!("good-{i}"), &rx.url)
            .for_types(&["t.good"])
            .concurrency(CONCURRENCY)
            .backoff("200ms", "1s");
        env.create_active(sub).await;
    }
    env.create_active(WebhookSubscription::test("bad", &failing.url).for_types(&["t.bad"]).failing_fast())
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish(env.namespace.clone(), replicas.roster.clone(), stop.clone()));
    deliveries_resume(&good, "deliveries under way").await;

    // One replica after another dies without a word; the others take its subscriptions over
    // once its lease runs out, and it comes back.
    for i in 0..REPLICAS {
        replicas.take(i).kill().await;
        deliveries_resume(&good, &format!("deliveries after r{i} was killed")).await;
        replicas.start(i).await;
    }
    // A rolling restart: each replica in turn stops gracefully, handing its work over at once.
    for i in 0..REPLICAS {
        assert!(replicas.take(i).terminate().await, "r{i} exits cleanly on SIGTERM");
        replicas.start(i).await;
        deliveries_resume(&good, &format!("deliveries after r{i} restarted")).await;
    }
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    assert!(
        published.failures.is_empty(),
        "publishes to replicas that stayed up failed: {:?}",
        published.failures
    );

    for (i, rx) in good.iter().enumerate() {
        wait_until(
            &format!("every accepted event delivered to good-{i}"),
            Duration::from_secs(120),
            || async {
                let got: HashSet<String> = rx.received().iter().map(|r| r.header("webhook-id")).collect();
                published.good.iter().all(|id| got.contains(id)).then_some(())
            },
        )
        .await;
    }
    let mut duplicates = 0;
    for (i, rx) in good.iter().enumerate() {
        let received = rx.received();
        let mut copies: HashMap<String, usize> = HashMap::new();
        for r in &received {
            *copies.entry(r.header("webhook-id")).or_default() += 1;
        }
        duplicates += received.len() - copies.len();
        assert!(
            rx.max_in_flight() <= CONCURRENCY as usize,
            "good-{i} saw {} requests at once, over its maxConcurrency {CONCURRENCY}",
            rx.max_in_flight()
        );
    }
    eprintln!(
        "published {} deliverable and {} undeliverable events; {duplicates} duplicate deliveries (same webhook-id)",
        published.good.len(),
        published.bad.len()
    );

    let failed_events = env.api::<FailedEvent>();
    let bad: HashSet<&String> = published.bad.iter().collect();
    wait_until("one FailedEvent per undeliverable event", Duration::from_secs(120), || async {
        let list = failed_events.list(&ListParams::default()).await.ok()?;
        let ids: Vec<String> = list.items.iter().map(|f| f.spec.event.id.clone()).collect();
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "two FailedEvents for one event: {ids:?}");
        bad.iter().all(|id| distinct.contains(id)).then_some(())
    })
    .await;

    let subs = env.api::<WebhookSubscription>();
    wait_until("every subscription's status to show an empty queue", WAIT, || async {
        let list = subs.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|s| {
                s.status.as_ref().and_then(|st| st.delivery_stats.as_ref()).is_some_and(|d| d.pending == 0)
            })
            .then_some(())
    })
    .await;
    assert!(published.good.len() >= 500, "only {} events published", published.good.len());
}

/// How a publisher's requests were answered while PostgreSQL went away and came back.
#[derive(Default)]
struct Answers {
    accepted: Vec<String>,
    /// Status codes of the refused publishes (or 0 when no answer came).
    refused: Vec<u16>,
}

/// Publish a batch of ten every 50 ms to `ingest` until `stop`.
async fn publish_through(ingest: String, ns: String, stop: Arc<AtomicBool>, answers: Arc<Mutex<Answers>>) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for n in 0usize.. {
        tick.tick().await;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let ids: Vec<String> = (0..10).map(|k| format!("o{n}-{k}")).collect();
        let events: Vec<(String, &str)> = ids.iter().map(|id| (id.clone(), "t")).collect();
        let status = publish_batch(&client, &ingest, &ns, "/outage", &events).await;
        let mut answers = answers.lock().expect("answers");
        if status == 202 { answers.accepted.extend(ids) } else { answers.refused.push(status) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_under_load_refuses_with_503_and_then_delivers_everything_accepted() {
    let pg = PrivatePostgres::start("postgres-outage");
    let env = TestEnv::with_crds_on("postgres-outage", POSTGRES).await;
    let store = StoreAt::Postgres(fresh_database_on(&pg.url).await);
    let h = env.start_hookline_in(&store, LOCAL).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::Delay(Duration::from_millis(2)));
    env.create_active(WebhookSubscription::test("s", &rx.url).concurrency(4).backoff("200ms", "1s")).await;

    let (stop, answers) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Answers::default())));
    let publisher =
        tokio::spawn(publish_through(h.ingest.clone(), env.namespace.clone(), stop.clone(), answers.clone()));
    let accepted = || answers.lock().expect("answers").accepted.len();
    wait_until("publishing and delivering", WAIT, || async {
        (accepted() >= 200 && rx.received().len() >= 100).then_some(())
    })
    .await;

    pg.crash();
    let readyz = format!("{}/readyz", h.metrics);
    // About ten seconds of refusals (20 publishes a second): longer than the lease, which runs
    // out and is taken up again.
    wait_until("publishes refused and /readyz failing while PostgreSQL is down", WAIT, || async {
        let refused = answers.lock().expect("answers").refused.len();
        let ready = http_get(&readyz).await.is_some_and(|(status, _)| status == 200);
        (refused >= 200 && !ready).then_some(())
    })
    .await;
    pg.restart();
    wait_until("/readyz and publishing back", WAIT, || async {
        let ready = http_get(&readyz).await.is_some_and(|(status, _)| status == 200);
        let before = accepted();
        (ready && before > 0).then_some(())
    })
    .await;
    let after_restart = accepted();
    wait_until("publishes accepted again", WAIT, || async {
        (accepted() >= after_restart + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("publisher");

    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    assert!(
        answers.refused.iter().all(|s| *s == 503),
        "a publish the store could not take is answered 503, never anything else: {:?}",
        answers.refused
    );
    wait_until("every accepted event delivered", Duration::from_secs(120), || async {
        let got: HashSet<String> = rx.received().iter().map(|r| r.header("webhook-id")).collect();
        answers.accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    eprintln!(
        "{} publishes accepted, {} refused with 503 while PostgreSQL was down",
        answers.accepted.len() / 10,
        answers.refused.len()
    );
}
