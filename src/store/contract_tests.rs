//! The [`Store`] contract, run against every store: SQLite on a fresh file, PostgreSQL on a
//! fresh database of the server `HOOKLINE_DATABASE_URL` names (`hack/postgres.sh up` starts one;
//! `hack/test.sh` does it itself). Without that server the PostgreSQL cases fail, saying so.

use std::ops::Deref;
use std::sync::Arc;

use rstest::rstest;

use super::{
    Attempt, DeadLetter, JobRef, JobUpdate, LogCursor, LogEntry, LogQuery, LogScope, NewEvent, OutcomeFilter,
    PartitionKey, PostgresStore, Replay, SentTo, SqliteStore, Store,
};

/// Which store a case runs against.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Sqlite,
    Postgres,
}
use Kind::{Postgres as POSTGRES, Sqlite as SQLITE};

/// A store of one test, on storage of its own.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Sqlite(Arc<tempfile::TempDir>),
    Postgres(String),
}

impl Deref for TestStore {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

/// The URL of a fresh database on the test server.
pub async fn fresh_database() -> String {
    let admin = std::env::var("HOOKLINE_DATABASE_URL").expect(
        "the PostgreSQL cases need a server: run `hack/postgres.sh up` and export the \
         HOOKLINE_DATABASE_URL it prints (hack/test.sh starts one itself)",
    );
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let name = format!("t_{:016x}", rand::random::<u64>());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let mut url = url::Url::parse(&admin).expect("HOOKLINE_DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

impl TestStore {
    pub async fn open(kind: Kind) -> TestStore {
        let place = match kind {
            Kind::Sqlite => Place::Sqlite(Arc::new(tempfile::tempdir().expect("tempdir"))),
            Kind::Postgres => Place::Postgres(fresh_database().await),
        };
        TestStore::at(place).await
    }

    async fn at(place: Place) -> TestStore {
        let store: Arc<dyn Store> = match &place {
            Place::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path()).expect("open")),
            Place::Postgres(url) => {
                Arc::new(PostgresStore::connect(url, 4, "hookline-test").await.expect("connect"))
            }
        };
        TestStore { store, place }
    }

    /// The same storage, opened again.
    pub async fn reopen(self) -> TestStore {
        let TestStore { store, place } = self;
        drop(store);
        TestStore::at(place).await
    }

    /// The stored payload of an event, by id.
    async fn body_of(&self, id: &str) -> Vec<u8> {
        match &self.place {
            Place::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("hookline.db")).expect("open");
                conn.query_row("SELECT body FROM events WHERE event_id = ?1", [id], |r| r.get(0))
                    .expect("event row")
            }
            Place::Postgres(url) => {
                let (client, connection) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                let sql = "SELECT body FROM hookline.events WHERE event_id = $1";
                client.query_one(sql, &[&id]).await.expect("event row").get(0)
            }
        }
    }
}

fn event(id: &str, targets: &[&str]) -> NewEvent {
    NewEvent {
        namespace: "ns".into(),
        source: "/src".into(),
        event_id: id.into(),
        event_type: "t".into(),
        body: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        accepted_at: 1_000,
        partition: None,
    }
}

fn attempt(job_id: i64, n: u32, update: JobUpdate) -> Attempt {
    Attempt {
        job_id,
        sub_uid: "a".into(),
        event_id: "e1".into(),
        event_type: "t".into(),
        attempt: n,
        at: 2_000 + n as i64,
        status: Some(500),
        duration_ms: 3,
        error: None,
        update,
        sent_to: SentTo {
            namespace: "ns".into(),
            subscription: "orders".into(),
            url: "https://e.com/".into(),
        },
        payload_bytes: 2000,
        fence: None,
    }
}

/// A page of `scope`'s log (`ns:` a namespace, `*` every namespace, else a subscription's UID),
/// after `after`.
fn log(scope: &str, limit: u32, after: Option<&LogEntry>) -> LogQuery {
    let scope = match scope.strip_prefix("ns:") {
        Some(ns) => LogScope::Namespace(ns.into()),
        None if scope == "*" => LogScope::All,
        None => LogScope::Subscription(scope.into()),
    };
    LogQuery { after: after.map(|e| LogCursor { at: e.at_ms, seq: e.seq }), ..LogQuery::page(scope, limit) }
}

#[rstest]
#[tokio::test]
async fn accepted_events_get_one_job_per_target_and_duplicates_none(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("e1", &["a", "b"]), event("e1", &["a"])]).await.expect("accept");
    assert!(!out[0].duplicate);
    assert_eq!(out[0].jobs.len(), 2);
    assert!(out[1].duplicate, "same source+id in the same batch");
    let again = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    assert!(again[0].duplicate);
    assert_eq!(store.pending("a").await.expect("pending").len(), 1);
}

#[rstest]
#[tokio::test]
async fn jobs_keep_their_partition_key_in_publish_order_and_the_earlier_jobs_of_a_lane_are_found(
    #[values(SQLITE, POSTGRES)] kind: Kind,
) {
    let store = TestStore::open(kind).await;
    let (a, b) = (PartitionKey::of("a"), PartitionKey::of("b"));
    // Ids out of key order, so a store that inserted jobs in key order would be caught.
    let keyed = |id: &str, partition| NewEvent { partition, ..event(id, &["s"]) };
    let batch = vec![keyed("z", Some(a)), keyed("y", Some(b)), keyed("x", Some(a)), keyed("w", None)];
    let out = store.accept(batch).await.expect("accept");
    let ids: Vec<i64> = out.iter().map(|o| o.jobs[0].1).collect();
    assert!(ids.is_sorted(), "job ids follow the order of publishing: {ids:?}");
    let late = store.replay(Replay { event: keyed("v", Some(a)), replay_of: "ns/f/u".into() }).await;
    let late = late.expect("replay").expect("queued");
    assert_eq!(late.partition, Some(a));
    let mut pending = store.pending("s").await.expect("pending");
    pending.sort_by_key(|j| j.job_id);
    let partitions: Vec<_> = pending.iter().map(|j| j.partition).collect();
    assert_eq!(partitions, [Some(a), Some(b), Some(a), None, Some(a)]);

    let found = |lanes| async { store.earlier("s", lanes).await.expect("earlier") };
    let ids_of = |jobs: Vec<JobRef>| jobs.iter().map(|j| j.job_id).collect::<Vec<_>>();
    assert_eq!(ids_of(found(vec![(Some(a), late.job_id)]).await), [ids[0], ids[2]]);
    assert_eq!(ids_of(found(vec![(Some(a), ids[2]), (Some(b), late.job_id)]).await), [ids[0], ids[1]]);
    assert_eq!(ids_of(found(vec![(None, ids[3])]).await), ids[..3]);
    assert!(found(vec![(Some(b), ids[1])]).await.is_empty());
    assert!(store.earlier("other", vec![(None, late.job_id)]).await.expect("earlier").is_empty());
}

#[rstest]
#[tokio::test]
async fn a_job_carries_its_event_and_retries_update_it(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    let job_id = out[0].jobs[0].1;
    let job = store.job(job_id).await.expect("read").expect("job");
    assert_eq!((job.attempts, job.accepted_at), (0, 1_000));
    assert_eq!(job.event, br#"{"id":"e1"}"#);
    store.record(attempt(job_id, 1, JobUpdate::Retry { due_at: 9_000 })).await.expect("record");
    let job = store.job(job_id).await.expect("read").expect("job");
    assert_eq!((job.attempts, job.first_attempt_at), (1, Some(2_001)));
    assert_eq!(
        store.pending("a").await.expect("pending"),
        vec![JobRef { due_at: 9_000, job_id, accepted_at: 1_000, partition: None }]
    );
    store.record(attempt(job_id, 2, JobUpdate::Delivered)).await.expect("record");
    assert!(store.job(job_id).await.expect("read").is_none());
    let log = store.deliveries(log("a", 10, None)).await.expect("log");
    let outcomes: Vec<_> = log.iter().map(|e| (e.attempt, e.outcome.as_str())).collect();
    assert_eq!(outcomes, [(2, "delivered"), (1, "retry")], "newest first");
}

#[rstest]
#[tokio::test]
async fn a_dead_letter_leaves_the_queue_for_the_outbox_exactly_once(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    let job_id = out[0].jobs[0].1;
    let letter = DeadLetter { namespace: "ns".into(), subscription: "orders".into(), failure: "{}".into() };
    store.record(attempt(job_id, 1, JobUpdate::DeadLetter(letter.clone()))).await.expect("record");
    assert!(store.pending("a").await.expect("pending").is_empty());
    let queued = store.dead_letters(10).await.expect("outbox");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].letter, letter);
    assert_eq!(queued[0].event, br#"{"id":"e1"}"#);
    store.dead_letter_done(job_id).await.expect("done");
    assert!(store.dead_letters(10).await.expect("outbox").is_empty());
}

#[rstest]
#[tokio::test]
async fn the_delivery_log_pages_with_a_cursor(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    let job_id = out[0].jobs[0].1;
    for n in 1..=5 {
        store.record(attempt(job_id, n, JobUpdate::Retry { due_at: 0 })).await.expect("record");
    }
    let first = store.deliveries(log("a", 2, None)).await.expect("page 1");
    assert_eq!(first.iter().map(|e| e.attempt).collect::<Vec<_>>(), [5, 4]);
    let second = store.deliveries(log("a", 2, first.last())).await.expect("page 2");
    assert_eq!(second.iter().map(|e| e.attempt).collect::<Vec<_>>(), [3, 2]);
    let third = store.deliveries(log("a", 2, second.last())).await.expect("page 3");
    assert_eq!(third.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1]);
    assert!(store.deliveries(log("b", 2, None)).await.expect("other").is_empty());
    let ns = store.deliveries(log("ns:ns", 10, None)).await.expect("namespace");
    assert_eq!(ns.len(), 5, "the namespace's log holds its subscriptions' attempts");
    assert_eq!(
        (ns[0].subscription.as_deref(), ns[0].url.as_deref()),
        (Some("orders"), Some("https://e.com/"))
    );
    assert!(store.deliveries(log("ns:other", 10, None)).await.expect("other ns").is_empty());

    // The cluster-wide log holds every namespace's attempts, each naming its namespace.
    let other = store.accept(vec![NewEvent { namespace: "other".into(), ..event("e2", &["b"]) }]);
    let other_job = other.await.expect("accept")[0].jobs[0].1;
    let elsewhere = attempt(other_job, 1, JobUpdate::Delivered);
    let sent_to = SentTo { namespace: "other".into(), ..elsewhere.sent_to.clone() };
    store.record(Attempt { at: 9_000, sent_to, ..elsewhere }).await.expect("record");
    let all = store.deliveries(log("*", 4, None)).await.expect("cluster-wide");
    let seen: Vec<_> = all.iter().map(|e| (e.namespace.as_deref(), e.attempt)).collect();
    assert_eq!(seen, [(Some("other"), 1), (Some("ns"), 5), (Some("ns"), 4), (Some("ns"), 3)]);
    let rest = store.deliveries(log("*", 4, all.last())).await.expect("cluster-wide, page 2");
    assert_eq!(rest.iter().map(|e| e.attempt).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(store.deliveries(log("ns:other", 10, None)).await.expect("other ns").len(), 1);
}

#[rstest]
#[tokio::test]
async fn the_delivery_log_is_filtered_by_outcome_type_event_and_time(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("e1", &["a"]), event("e2", &["a"])]).await.expect("accept");
    let (j1, j2) = (out[0].jobs[0].1, out[1].jobs[0].1);
    // e1: retry at 2_001, delivered at 2_002; e2 (type u): dropped at 2_001.
    store.record(attempt(j1, 1, JobUpdate::Retry { due_at: 0 })).await.expect("record");
    store.record(attempt(j1, 2, JobUpdate::Delivered)).await.expect("record");
    let dropped =
        Attempt { event_id: "e2".into(), event_type: "u".into(), ..attempt(j2, 1, JobUpdate::Dropped) };
    store.record(dropped).await.expect("record");
    for scope in ["a", "ns:ns", "*"] {
        let get = |f: &dyn Fn(&mut LogQuery)| {
            let mut q = log(scope, 10, None);
            f(&mut q);
            let store = &store;
            async move {
                store
                    .deliveries(q)
                    .await
                    .expect("log")
                    .iter()
                    .map(|e| (e.event_id.clone(), e.attempt))
                    .collect::<Vec<_>>()
            }
        };
        let e = |id: &str, n: u32| (id.to_string(), n);
        assert_eq!(get(&|q| q.outcome = Some(OutcomeFilter::Delivered)).await, [e("e1", 2)]);
        assert_eq!(get(&|q| q.outcome = Some(OutcomeFilter::Failed)).await, [e("e2", 1), e("e1", 1)]);
        assert_eq!(get(&|q| q.outcome = Some(OutcomeFilter::Exactly("dropped"))).await, [e("e2", 1)]);
        assert_eq!(get(&|q| q.event_type = Some("u".into())).await, [e("e2", 1)]);
        assert_eq!(get(&|q| q.event_id = Some("e1".into())).await, [e("e1", 2), e("e1", 1)]);
        assert_eq!(get(&|q| q.since = Some(2_002)).await, [e("e1", 2)]);
        assert_eq!(get(&|q| q.until = Some(2_002)).await, [e("e2", 1), e("e1", 1)]);
        assert_eq!(
            get(&|q| {
                q.outcome = Some(OutcomeFilter::Failed);
                q.event_type = Some("t".into());
            })
            .await,
            [e("e1", 1)]
        );
    }
}

#[rstest]
#[tokio::test]
async fn dropping_a_subscription_drops_only_its_jobs(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    store.accept(vec![event("e1", &["a", "b"]), event("e2", &["a"])]).await.expect("accept");
    assert_eq!(store.drop_subscription("a").await.expect("drop"), 2);
    assert!(store.pending("a").await.expect("pending").is_empty());
    assert_eq!(store.pending("b").await.expect("pending").len(), 1);
}

#[rstest]
#[tokio::test]
async fn pruning_keeps_events_with_work_and_forgets_finished_ones(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![event("done", &["a"]), event("queued", &["a"])]).await.expect("accept");
    store.record(attempt(out[0].jobs[0].1, 1, JobUpdate::Delivered)).await.expect("record");
    store.prune(i64::MAX, 5_000, 100).await.expect("prune");
    assert!(store.deliveries(log("a", 10, None)).await.expect("log").is_empty(), "old log entries pruned");
    assert!(store.job(out[1].jobs[0].1).await.expect("read").is_some(), "queued event kept");
    let again = store.accept(vec![event("done", &["a"])]).await.expect("accept");
    assert!(!again[0].duplicate, "a finished event past the dedup window is forgotten");
}

#[rstest]
#[tokio::test]
async fn everything_survives_a_reopen(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let job_id = store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].jobs[0].1;
    let store = store.reopen().await;
    assert_eq!(store.pending("a").await.expect("pending")[0].job_id, job_id);
    assert!(store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].duplicate);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_all_commit(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.store.clone();
        tasks.push(tokio::spawn(async move { store.accept(vec![event(&format!("e{i}"), &["a"])]).await }));
    }
    for t in tasks {
        assert!(!t.await.expect("join").expect("accept")[0].duplicate);
    }
    assert_eq!(store.pending("a").await.expect("pending").len(), 200);
}

/// Publishes that share a transaction still answer each request for its own events, and an event
/// sent in several of them is stored once.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_of_one_event_store_it_once(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = store.store.clone();
        let events = vec![event(&format!("own{i}"), &["a", "b"]), event("shared", &["a"])];
        tasks.push(tokio::spawn(async move { store.accept(events).await }));
    }
    let mut stored_shared = 0;
    for t in tasks {
        let out = t.await.expect("join").expect("accept");
        assert!(!out[0].duplicate);
        assert_eq!(out[0].jobs.iter().map(|(uid, _)| uid.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        stored_shared += usize::from(!out[1].duplicate);
        assert_eq!(out[1].jobs.len(), usize::from(!out[1].duplicate));
    }
    assert_eq!(stored_shared, 1);
    assert_eq!(store.pending("a").await.expect("pending").len(), 101);
    assert_eq!(store.pending("b").await.expect("pending").len(), 100);
}

#[rstest]
#[tokio::test]
async fn a_replay_is_queued_once_and_its_outcome_waits_in_the_outbox(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let replay = || Replay { event: event("e1", &["a"]), replay_of: "ns/fev/uid-1".into() };
    let job = store.replay(replay()).await.expect("replay").expect("queued");
    assert!(store.replay(replay()).await.expect("replay").is_none(), "one pending replay per FailedEvent");
    assert_eq!(
        store.job(job.job_id).await.expect("read").expect("job").replay_of.as_deref(),
        Some("ns/fev/uid-1")
    );
    let letter = DeadLetter { namespace: "ns".into(), subscription: "s".into(), failure: "{}".into() };
    store.record(attempt(job.job_id, 1, JobUpdate::DeadLetter(letter))).await.expect("record");
    assert!(
        store.dead_letters(10).await.expect("outbox").is_empty(),
        "a failed replay makes no second dead letter"
    );
    let results = store.replay_results(10).await.expect("results");
    assert_eq!(
        (results.len(), results[0].delivered, results[0].replay_of.as_str()),
        (1, false, "ns/fev/uid-1")
    );
    store.replay_result_done(results[0].job_id).await.expect("done");
    assert!(store.replay_results(10).await.expect("results").is_empty());
    let again =
        store.replay(replay()).await.expect("replay").expect("a finished replay can be requested again");
    store.record(attempt(again.job_id, 1, JobUpdate::Delivered)).await.expect("record");
    assert!(store.replay_results(10).await.expect("results")[0].delivered);
}

#[rstest]
#[tokio::test]
async fn a_validation_url_verifies_once_and_only_before_it_expires(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let pending = crate::store::Verification {
        sub_uid: "a".into(),
        url: "https://e.com/".into(),
        method: "Event".into(),
        token: Some("tok".into()),
        code: Some("code".into()),
        expires_at: Some(10_000),
        ..Default::default()
    };
    store.put_verification(pending.clone()).await.expect("put");
    assert_eq!(store.confirm_validation("tok", 10_000).await.expect("confirm"), None, "expired");
    assert_eq!(store.confirm_validation("other", 5_000).await.expect("confirm"), None, "unknown token");
    assert_eq!(store.confirm_validation("tok", 5_000).await.expect("confirm").as_deref(), Some("a"));
    assert_eq!(store.confirm_validation("tok", 5_000).await.expect("confirm"), None, "single use");
    let v = store.verification("a").await.expect("read").expect("row");
    assert_eq!((v.verified_at, v.token), (Some(5_000), None));
    // The handshake request that carried the URL was still in flight when it was opened: the
    // record its attempt writes afterwards does not undo the confirmation.
    let answered =
        crate::store::Verification { attempts: 1, message: "answered 200".into(), ..pending.clone() };
    store.put_verification(answered).await.expect("put");
    let v = store.verification("a").await.expect("read").expect("row");
    assert_eq!((v.verified_at, v.attempts), (Some(5_000), 0), "the confirmation stands");
    // A new URL (or method, or revalidation) starts over, verified or not.
    let moved = crate::store::Verification { url: "https://moved.example.com/".into(), ..pending.clone() };
    store.put_verification(moved).await.expect("put");
    let v = store.verification("a").await.expect("read").expect("row");
    assert_eq!((v.verified_at, v.url.as_str()), (None, "https://moved.example.com/"));
    store.drop_subscription("a").await.expect("drop");
    assert!(store.verification("a").await.expect("read").is_none());
}

#[rstest]
#[tokio::test]
async fn job_ids_are_never_reused_so_outboxes_cannot_collide(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let first = store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].jobs[0].1;
    let letter = DeadLetter { namespace: "ns".into(), subscription: "s".into(), failure: "{}".into() };
    store.record(attempt(first, 1, JobUpdate::DeadLetter(letter.clone()))).await.expect("record");
    let second = store.accept(vec![event("e2", &["a"])]).await.expect("accept")[0].jobs[0].1;
    assert_ne!(first, second, "the deleted job's id is not handed out again");
    store.record(attempt(second, 1, JobUpdate::DeadLetter(letter))).await.expect("record");
    assert_eq!(store.dead_letters(10).await.expect("outbox").len(), 2, "both dead letters are kept");
}

#[rstest]
#[tokio::test]
async fn pruning_goes_in_bounded_rounds(#[values(SQLITE, POSTGRES)] kind: Kind) {
    let store = TestStore::open(kind).await;
    let events: Vec<NewEvent> = (0..5).map(|i| event(&format!("e{i}"), &[])).collect();
    store.accept(events).await.expect("accept");
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 2, "at most `limit` events per round");
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 2);
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 1);
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 0);
}

/// An event whose payload is large enough to be forgotten once nothing needs it.
fn large(id: &str, targets: &[&str]) -> NewEvent {
    NewEvent {
        body: format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(2000)).into_bytes(),
        ..event(id, targets)
    }
}

#[rstest]
#[tokio::test]
async fn a_large_payload_is_forgotten_once_no_job_needs_it_but_deduplication_remembers_the_event(
    #[values(SQLITE, POSTGRES)] kind: Kind,
) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![large("e1", &["a", "b"]), event("small", &["a"])]).await.expect("accept");
    let (job_a, job_b) = (out[0].jobs[0].1, out[0].jobs[1].1);
    store.record(attempt(job_a, 1, JobUpdate::Delivered)).await.expect("record");
    assert_eq!(store.body_of("e1").await, large("e1", &[]).body, "subscription b still needs it");
    let letter = DeadLetter { namespace: "ns".into(), subscription: "orders".into(), failure: "{}".into() };
    store.record(attempt(job_b, 1, JobUpdate::DeadLetter(letter))).await.expect("record");
    assert_eq!(store.body_of("e1").await, large("e1", &[]).body, "the FailedEvent writer still needs it");
    assert_eq!(store.dead_letters(10).await.expect("outbox")[0].event, large("e1", &[]).body);
    store.dead_letter_done(job_b).await.expect("done");
    assert!(store.body_of("e1").await.is_empty(), "nothing needs the payload any more");
    assert!(
        store.accept(vec![large("e1", &["a"])]).await.expect("accept")[0].duplicate,
        "still deduplicated"
    );

    let small = Attempt { payload_bytes: 14, ..attempt(out[1].jobs[0].1, 1, JobUpdate::Delivered) };
    store.record(small).await.expect("record");
    assert_eq!(store.body_of("small").await, br#"{"id":"small"}"#, "a small payload goes with its row");
}

#[rstest]
#[tokio::test]
async fn a_replay_brings_a_forgotten_payload_back_and_a_dropped_subscription_frees_its_payloads(
    #[values(SQLITE, POSTGRES)] kind: Kind,
) {
    let store = TestStore::open(kind).await;
    let out = store.accept(vec![large("e1", &["a"]), large("e2", &["a", "b"])]).await.expect("accept");
    store.record(attempt(out[0].jobs[0].1, 1, JobUpdate::Delivered)).await.expect("record");
    assert!(store.body_of("e1").await.is_empty());
    let job = store
        .replay(Replay { event: large("e1", &["a"]), replay_of: "ns/fev-1".into() })
        .await
        .expect("replay")
        .expect("queued");
    assert_eq!(store.job(job.job_id).await.expect("read").expect("job").event, large("e1", &[]).body);

    store.drop_subscription("b").await.expect("drop");
    assert_eq!(store.body_of("e2").await, large("e2", &[]).body, "subscription a still needs e2");
    store.drop_subscription("a").await.expect("drop");
    assert!(store.body_of("e2").await.is_empty() && store.body_of("e1").await.is_empty());
}
