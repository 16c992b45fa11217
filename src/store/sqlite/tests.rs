use std::cell::RefCell;

use super::group::{write_group, write_loop};
use super::writes::{PRUNE_EVENTS, PRUNE_LOG};
use super::*;

#[test]
fn a_failing_request_undoes_only_its_own_writes_in_a_shared_transaction() {
    let mut conn = Connection::open_in_memory().expect("open");
    conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)").expect("schema");
    let keys = RefCell::new(Keys::new());
    let insert = |v: i64| {
        move |c: &Tx| {
            c.execute("INSERT INTO t VALUES (?1)", [v])?;
            c.keys().add(v as u64, v);
            Ok(())
        }
    };
    let (first, first_rx) = oneshot::channel();
    let (second, mut second_rx) = oneshot::channel();
    let (third, third_rx) = oneshot::channel();
    let mut group = vec![
        Request::boxed(insert(1), first),
        Request::boxed(
            move |c: &Tx| {
                insert(2)(c)?;
                insert(1)(c) // duplicate key: fails after a write
            },
            second,
        ),
        Request::boxed(insert(3), third),
    ];
    let commit = write_group(&mut conn, &keys, &mut group).map_err(std::sync::Arc::new);
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
    assert_eq!(keys.borrow().len(), 2, "and so are the dedup keys it added");
}

#[test]
fn only_a_group_of_lazy_requests_commits_without_waiting_for_its_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = open(&dir.path().join("flush.db")).expect("open");
    let (writer, rx) = mpsc::channel(4);
    let thread = std::thread::spawn(move || write_loop(conn, Keys::new(), rx));
    // Each request reports the `synchronous` its transaction commits with: 2 FULL, 1 NORMAL.
    let synchronous = |c: &Tx| c.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0));
    let group = |lazy: &[bool]| -> Vec<i64> {
        let (requests, answers): (Writes, Vec<_>) = lazy
            .iter()
            .map(|&lazy| {
                let (reply, answer) = oneshot::channel();
                let request =
                    if lazy { Request::lazy(synchronous, reply) } else { Request::boxed(synchronous, reply) };
                (request, answer)
            })
            .unzip();
        writer.blocking_send(requests).expect("the writer runs");
        answers.into_iter().map(|a| a.blocking_recv().expect("answer").expect("committed")).collect()
    };
    assert_eq!(group(&[false]), [2], "a publish waits for its flush");
    assert_eq!(group(&[true, true]), [1, 1], "records of deliveries do not");
    assert_eq!(group(&[false]), [2], "the connection is FULL again after a lazy group");
    assert_eq!(group(&[true, false]), [2, 2], "in a group with a publish, records wait with it");
    drop(writer);
    thread.join().expect("the writer stops");
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

#[test]
fn the_earlier_jobs_of_a_lane_are_found_on_an_index_in_id_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = open(&dir.path().join("plan.db")).expect("open");
    migrate(&mut conn).expect("migrate");
    let plan = |sql: &str, values: &[i64]| -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("plan");
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&"uid"];
        args.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
        stmt.query_map(args.as_slice(), |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let of_key = plan(super::EARLIER_OF_KEY, &[7, 100, 10]);
    assert!(of_key.iter().any(|s| s.contains("INDEX jobs_by_partition")), "{of_key:?}");
    let all = plan(super::EARLIER, &[100, 10]);
    assert!(all.iter().any(|s| s.contains("INDEX jobs_by_sub")), "{all:?}");
    for steps in [of_key, all] {
        assert!(steps.iter().all(|s| !s.starts_with("SCAN") && !s.contains("TEMP B-TREE")), "{steps:?}");
    }
}

#[test]
fn every_delivery_log_query_runs_on_its_index_in_the_log_s_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = open(&dir.path().join("plan.db")).expect("open");
    migrate(&mut conn).expect("migrate");
    for query in crate::store::LogQuery::combinations() {
        let (sql, params) = query.sql(crate::store::Dialect::Sqlite);
        let params: Vec<rusqlite::types::Value> = params
            .into_iter()
            .map(|p| match p {
                crate::store::SqlParam::Text(t) => t.into(),
                crate::store::SqlParam::Int(i) => i.into(),
            })
            .collect();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        // Without a time range the cluster-wide log reads the time index from its newest end,
        // up to a page.
        let searched = format!("INDEX {} (", query.index());
        let whole_index = match query.scope {
            crate::store::LogScope::All => format!("SCAN attempts USING INDEX {}", query.index()),
            _ => searched.clone(),
        };
        let on_index = |s: &String| s.contains(&searched) || *s == whole_index;
        assert!(plan.iter().any(on_index), "{sql}: {plan:?}");
        let scans = |s: &String| s.starts_with("SCAN") && *s != whole_index;
        assert!(plan.iter().all(|s| !scans(s) && !s.contains("TEMP B-TREE")), "{sql}: {plan:?}");
    }
}

/// A store written by schema 4 (deduplication by a unique index), with a pending job, a pending
/// dead letter and an event kept only for deduplication, opened by this version.
#[tokio::test]
async fn a_store_of_the_previous_schema_is_rebuilt_and_keeps_its_queue_and_dedup_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hookline.db");
    {
        let conn = open(&path).expect("open");
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", 4).expect("version");
        conn.execute_batch(
            "INSERT INTO events (seq, namespace, source, event_id, event_type, accepted_at_ms, body) VALUES
               (1, 'shop', '/orders', 'pending', 't', 1000, x'7b7d'),
               (2, 'shop', '/orders', 'dead', 't', 1001, x'7b7d'),
               (3, 'shop', '/orders', 'delivered', 't', 1002, x'');
             INSERT INTO jobs (id, event_seq, sub_uid, due_at_ms) VALUES (10, 1, 'sub', 1000), (11, 2, 'sub', 1001);
             INSERT INTO dead_letters (job_id, sub_uid, namespace, subscription, event_seq, failure)
               VALUES (11, 'sub', 'shop', 'orders', 2, 'gave up');
             DELETE FROM jobs WHERE id = 11;",
        )
        .expect("old rows");
    }
    let store = SqliteStore::open(dir.path()).expect("upgrade");
    let pending = store.pending("sub").await.expect("pending");
    assert_eq!(pending.iter().map(|j| j.job_id).collect::<Vec<_>>(), [10], "the pending job is still queued");
    let jobs = store.jobs(vec![10]).await.expect("jobs");
    assert_eq!(jobs[0].event, b"{}", "with its event");
    let dead = store.dead_letters(10).await.expect("dead letters");
    assert_eq!(
        dead.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        [11],
        "the dead letter waits in its outbox"
    );
    store
        .record(Attempt {
            job_id: 10,
            sub_uid: "sub".into(),
            event_id: "pending".into(),
            event_type: "t".into(),
            attempt: 1,
            at: 2000,
            status: Some(200),
            duration_ms: 1,
            error: None,
            update: super::super::JobUpdate::Delivered,
            sent_to: Default::default(),
            payload_bytes: 2,
            fence: None,
        })
        .await
        .expect("delivered after the upgrade");
    assert!(store.pending("sub").await.expect("pending").is_empty());
    let publish = |id: &str| NewEvent {
        namespace: "shop".into(),
        source: "/orders".into(),
        event_id: id.into(),
        event_type: "t".into(),
        body: b"{}".to_vec(),
        targets: vec!["sub".into()],
        accepted_at: 3000,
        partition: None,
    };
    let again = store
        .accept(vec![publish("pending"), publish("dead"), publish("delivered"), publish("new")])
        .await
        .expect("accept");
    assert_eq!(
        again.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
        [true, true, true, false],
        "events stored before the upgrade are still duplicates; a new one is not"
    );
    let conn = open(&path).expect("open");
    let unique: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'sqlite_autoindex_events%'", [], |r| {
            r.get(0)
        })
        .expect("indexes");
    assert_eq!(unique, 0, "the unique index is gone");
}
