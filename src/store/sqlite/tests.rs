use super::group::write_group;
use super::writes::{PRUNE_EVENTS, PRUNE_LOG};
use super::*;

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
