use super::group::write_group;
use super::writes::{PRUNE_EVENTS, PRUNE_LOG};
use super::*;
use crate::store::{DeadLetter, JobUpdate, NewEvent, Replay};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    (dir, store)
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
        payload_bytes: 2000,
    }
}

#[tokio::test]
async fn accepted_events_get_one_job_per_target_and_duplicates_none() {
    let (_dir, store) = store();
    let out = store.accept(vec![event("e1", &["a", "b"]), event("e1", &["a"])]).await.expect("accept");
    assert!(!out[0].duplicate);
    assert_eq!(out[0].jobs.len(), 2);
    assert!(out[1].duplicate, "same source+id in the same batch");
    let again = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    assert!(again[0].duplicate);
    assert_eq!(store.pending("a").await.expect("pending").len(), 1);
}

#[tokio::test]
async fn a_job_carries_its_event_and_retries_update_it() {
    let (_dir, store) = store();
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
        vec![JobRef { due_at: 9_000, job_id, accepted_at: 1_000 }]
    );
    store.record(attempt(job_id, 2, JobUpdate::Delivered)).await.expect("record");
    assert!(store.job(job_id).await.expect("read").is_none());
    let log = store.deliveries("a", 10, None).await.expect("log");
    let outcomes: Vec<_> = log.iter().map(|e| (e.attempt, e.outcome.as_str())).collect();
    assert_eq!(outcomes, [(2, "delivered"), (1, "retry")], "newest first");
}

#[tokio::test]
async fn a_dead_letter_leaves_the_queue_for_the_outbox_exactly_once() {
    let (_dir, store) = store();
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

#[tokio::test]
async fn the_delivery_log_pages_with_a_cursor() {
    let (_dir, store) = store();
    let out = store.accept(vec![event("e1", &["a"])]).await.expect("accept");
    let job_id = out[0].jobs[0].1;
    for n in 1..=5 {
        store.record(attempt(job_id, n, JobUpdate::Retry { due_at: 0 })).await.expect("record");
    }
    let first = store.deliveries("a", 2, None).await.expect("page 1");
    assert_eq!(first.iter().map(|e| e.attempt).collect::<Vec<_>>(), [5, 4]);
    let second = store.deliveries("a", 2, Some(first[1].seq)).await.expect("page 2");
    assert_eq!(second.iter().map(|e| e.attempt).collect::<Vec<_>>(), [3, 2]);
    let third = store.deliveries("a", 2, Some(second[1].seq)).await.expect("page 3");
    assert_eq!(third.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1]);
    assert!(store.deliveries("b", 2, None).await.expect("other").is_empty());
}

#[tokio::test]
async fn dropping_a_subscription_drops_only_its_jobs() {
    let (_dir, store) = store();
    store.accept(vec![event("e1", &["a", "b"]), event("e2", &["a"])]).await.expect("accept");
    assert_eq!(store.drop_subscription("a").await.expect("drop"), 2);
    assert!(store.pending("a").await.expect("pending").is_empty());
    assert_eq!(store.pending("b").await.expect("pending").len(), 1);
}

#[tokio::test]
async fn pruning_keeps_events_with_work_and_forgets_finished_ones() {
    let (_dir, store) = store();
    let out = store.accept(vec![event("done", &["a"]), event("queued", &["a"])]).await.expect("accept");
    store.record(attempt(out[0].jobs[0].1, 1, JobUpdate::Delivered)).await.expect("record");
    store.prune(i64::MAX, 5_000, 100).await.expect("prune");
    assert!(store.deliveries("a", 10, None).await.expect("log").is_empty(), "old log entries pruned");
    assert!(store.job(out[1].jobs[0].1).await.expect("read").is_some(), "queued event kept");
    let again = store.accept(vec![event("done", &["a"])]).await.expect("accept");
    assert!(!again[0].duplicate, "a finished event past the dedup window is forgotten");
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job_id = {
        let store = SqliteStore::open(dir.path()).expect("open");
        store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].jobs[0].1
    };
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.pending("a").await.expect("pending")[0].job_id, job_id);
    assert!(store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_all_commit() {
    let (_dir, store) = store();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.accept(vec![event(&format!("e{i}"), &["a"])]).await }));
    }
    for t in tasks {
        assert!(!t.await.expect("join").expect("accept")[0].duplicate);
    }
    assert_eq!(store.pending("a").await.expect("pending").len(), 200);
}

#[tokio::test]
async fn a_replay_is_queued_once_and_its_outcome_waits_in_the_outbox() {
    let (_dir, store) = store();
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

#[tokio::test]
async fn a_validation_url_verifies_once_and_only_before_it_expires() {
    let (_dir, store) = store();
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
    store.drop_subscription("a").await.expect("drop");
    assert!(store.verification("a").await.expect("read").is_none());
}

#[tokio::test]
async fn job_ids_are_never_reused_so_outboxes_cannot_collide() {
    let (_dir, store) = store();
    let first = store.accept(vec![event("e1", &["a"])]).await.expect("accept")[0].jobs[0].1;
    let letter = DeadLetter { namespace: "ns".into(), subscription: "s".into(), failure: "{}".into() };
    store.record(attempt(first, 1, JobUpdate::DeadLetter(letter.clone()))).await.expect("record");
    let second = store.accept(vec![event("e2", &["a"])]).await.expect("accept")[0].jobs[0].1;
    assert_ne!(first, second, "the deleted job's id is not handed out again");
    store.record(attempt(second, 1, JobUpdate::DeadLetter(letter))).await.expect("record");
    assert_eq!(store.dead_letters(10).await.expect("outbox").len(), 2, "both dead letters are kept");
}

#[test]
fn a_failing_request_undoes_only_its_own_writes_in_a_shared_transaction() {
    let mut conn = Connection::open_in_memory().expect("open");
    conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)").expect("schema");
    let insert = |v: i64| move |c: &Connection| c.execute("INSERT INTO t VALUES (?1)", [v]);
    let (first, first_rx) = oneshot::channel();
    let (second, mut second_rx) = oneshot::channel();
    let (third, third_rx) = oneshot::channel();
    let mut group = vec![
        Request::boxed(insert(1), first),
        Request::boxed(
            move |c: &Connection| {
                insert(2)(c)?;
                insert(1)(c) // duplicate key: fails after a write
            },
            second,
        ),
        Request::boxed(insert(3), third),
    ];
    let commit = write_group(&mut conn, &mut group).map_err(std::sync::Arc::new);
    for request in group {
        request.answer(commit.as_ref().err());
    }
    assert!(commit.is_ok(), "the others commit: {commit:?}");
    assert!(first_rx.blocking_recv().expect("answer").is_ok());
    assert!(matches!(second_rx.try_recv(), Ok(Err(StoreError::Sqlite(_)))), "the failing request fails");
    assert!(third_rx.blocking_recv().expect("answer").is_ok(), "a request after the failing one still runs");
    let rows: Vec<i64> = conn
        .prepare("SELECT v FROM t ORDER BY v")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows, [1, 3], "the failed request's first write is undone, the others kept");
}

#[tokio::test]
async fn pruning_goes_in_bounded_rounds() {
    let (_dir, store) = store();
    let events: Vec<NewEvent> = (0..5).map(|i| event(&format!("e{i}"), &[])).collect();
    store.accept(events).await.expect("accept");
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 2, "at most `limit` events per round");
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 2);
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 1);
    assert_eq!(store.prune(0, 5_000, 2).await.expect("prune"), 0);
}

#[test]
fn pruning_finds_old_rows_by_index_not_by_scanning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = open(&dir.path().join("plan.db")).expect("open");
    migrate(&mut conn).expect("migrate");
    for sql in [PRUNE_LOG, PRUNE_EVENTS] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map(params![0, 10], |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(plan.iter().all(|step| !step.starts_with("SCAN")), "{sql}: {plan:?}");
    }
}

/// The stored payload of an event, by id.
fn body_of(store: &SqliteStore, id: &str) -> Vec<u8> {
    let reader = store.reader.lock().expect("reader");
    reader.query_row("SELECT body FROM events WHERE event_id = ?1", [id], |r| r.get(0)).expect("event row")
}

/// An event whose payload is large enough to be forgotten once nothing needs it.
fn large(id: &str, targets: &[&str]) -> NewEvent {
    NewEvent {
        body: format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(2000)).into_bytes(),
        ..event(id, targets)
    }
}

#[tokio::test]
async fn a_large_payload_is_forgotten_once_no_job_needs_it_but_deduplication_remembers_the_event() {
    let (_dir, store) = store();
    let out = store.accept(vec![large("e1", &["a", "b"]), event("small", &["a"])]).await.expect("accept");
    let (job_a, job_b) = (out[0].jobs[0].1, out[0].jobs[1].1);
    store.record(attempt(job_a, 1, JobUpdate::Delivered)).await.expect("record");
    assert_eq!(body_of(&store, "e1"), large("e1", &[]).body, "subscription b still needs it");
    let letter = DeadLetter { namespace: "ns".into(), subscription: "orders".into(), failure: "{}".into() };
    store.record(attempt(job_b, 1, JobUpdate::DeadLetter(letter))).await.expect("record");
    assert_eq!(body_of(&store, "e1"), large("e1", &[]).body, "the FailedEvent writer still needs it");
    assert_eq!(store.dead_letters(10).await.expect("outbox")[0].event, large("e1", &[]).body);
    store.dead_letter_done(job_b).await.expect("done");
    assert!(body_of(&store, "e1").is_empty(), "nothing needs the payload any more");
    assert!(
        store.accept(vec![large("e1", &["a"])]).await.expect("accept")[0].duplicate,
        "still deduplicated"
    );

    let small = Attempt { payload_bytes: 14, ..attempt(out[1].jobs[0].1, 1, JobUpdate::Delivered) };
    store.record(small).await.expect("record");
    assert_eq!(body_of(&store, "small"), br#"{"id":"small"}"#, "a small payload goes with its row");
}

#[tokio::test]
async fn a_replay_brings_a_forgotten_payload_back_and_a_dropped_subscription_frees_its_payloads() {
    let (_dir, store) = store();
    let out = store.accept(vec![large("e1", &["a"]), large("e2", &["a", "b"])]).await.expect("accept");
    store.record(attempt(out[0].jobs[0].1, 1, JobUpdate::Delivered)).await.expect("record");
    assert!(body_of(&store, "e1").is_empty());
    let job = store
        .replay(Replay { event: large("e1", &["a"]), replay_of: "ns/fev-1".into() })
        .await
        .expect("replay")
        .expect("queued");
    assert_eq!(store.job(job.job_id).await.expect("read").expect("job").event, large("e1", &[]).body);

    store.drop_subscription("b").await.expect("drop");
    assert_eq!(body_of(&store, "e2"), large("e2", &[]).body, "subscription a still needs e2");
    store.drop_subscription("a").await.expect("drop");
    assert!(body_of(&store, "e2").is_empty() && body_of(&store, "e1").is_empty());
}
