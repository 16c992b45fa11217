use super::*;
use crate::report::Chain;
use crate::store::Fence;

#[test]
fn a_target_names_the_server_but_never_the_password() {
    let config: tokio_postgres::Config =
        "postgres://app:s3cret@db.example:6543/hookline?sslmode=disable".parse().expect("valid URL");
    let shown = target(&config);
    assert_eq!(shown, "db.example:6543/hookline as app");
    assert!(!shown.contains("s3cret"));
}

/// Every delivery-log query can be answered from an index in the log's order: with
/// sequential scans and sorts priced out, the plan has neither (an empty table would
/// otherwise be scanned, as it is cheapest).
#[tokio::test]
async fn every_delivery_log_query_runs_on_an_index_in_the_log_s_order() {
    let url = crate::store::contract_tests::fresh_database().await;
    let store = PostgresStore::connect(&url, 2, "test").await.expect("connect");
    let mut client = store.pool.get().await.expect("client");
    for query in crate::store::LogQuery::combinations() {
        let tx = client.transaction().await.expect("tx");
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off").await.expect("set");
        let (sql, params) = query.sql(Dialect::Postgres);
        let params = pg_params(params);
        let rows = tx.query(&format!("EXPLAIN {sql}"), &refs(&params)).await.expect("explain");
        let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert!(plan.iter().all(|s| !s.contains("Seq Scan") && !s.contains("Sort")), "{sql}: {plan:#?}");
        assert!(
            plan.iter().any(|s| s.contains("Index Scan Backward using attempts_by_")),
            "{sql}: {plan:#?}"
        );
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn a_claim_holds_while_its_owner_lives_and_fences_the_old_owner_once_taken_over() {
    let url = crate::store::contract_tests::fresh_database().await;
    let store = PostgresStore::connect(&url, 4, "test").await.expect("connect");
    let lease = Duration::from_secs(30);
    let members = store.heartbeat("a/1", "a", lease).await.expect("heartbeat");
    assert_eq!(members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a/1"]);
    assert!(members[0].left > Duration::from_secs(29));
    assert_eq!(store.claim("s", "a/1").await.expect("claim"), Some(1));
    store.heartbeat("b/1", "b", lease).await.expect("heartbeat");
    assert_eq!(store.claim("s", "b/1").await.expect("claim"), None, "a/1 is alive");

    let accepted = store.accept(vec![crate::store::NewEvent {
        namespace: "ns".into(),
        source: "/src".into(),
        event_id: "e1".into(),
        event_type: "t".into(),
        body: b"{}".to_vec(),
        targets: vec!["s".into()],
        accepted_at: 1,
        partition: None,
    }]);
    let job_id = accepted.await.expect("accept")[0].jobs[0].1;
    let attempt = |owner: &str, epoch| Attempt {
        job_id,
        sub_uid: "s".into(),
        event_id: "e1".into(),
        event_type: "t".into(),
        attempt: 1,
        at: 2,
        status: Some(500),
        duration_ms: 1,
        error: None,
        update: crate::store::JobUpdate::Retry { due_at: 10 },
        sent_to: Default::default(),
        payload_bytes: 2,
        fence: Some(Fence { owner: owner.into(), epoch }),
    };
    store.record(attempt("a/1", 1)).await.expect("the owner records");

    // a/1 leaves (or its lease runs out): b/1 takes over with a higher epoch.
    store.leave("a/1").await.expect("leave");
    assert_eq!(store.claim("s", "b/1").await.expect("claim"), Some(2));
    assert!(matches!(store.record(attempt("a/1", 1)).await, Err(StoreError::Fenced)));
    store.record(attempt("b/1", 2)).await.expect("the new owner records");
    assert_eq!(
        store
            .deliveries(crate::store::LogQuery::page(crate::store::LogScope::Subscription("s".into()), 10))
            .await
            .expect("log")
            .len(),
        2,
        "the fenced one left no trace"
    );
    let claims = store.claims().await.expect("claims");
    assert_eq!(claims, [Claim { key: "s".into(), owner: Some("b/1".into()), epoch: 2 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let url = crate::store::contract_tests::fresh_database().await;
    let starts = (0..4).map(|i| {
        let url = url.clone();
        tokio::spawn(async move { PostgresStore::connect(&url, 2, &format!("replica-{i}")).await })
    });
    for started in futures::future::join_all(starts).await {
        started.expect("join").expect("every replica starts");
    }
    let store = PostgresStore::connect(&url, 2, "check").await.expect("connect");
    let client = store.pool.get().await.expect("connection");
    let versions: Vec<i32> = client
        .query("SELECT version FROM hookline.schema_version ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>(), "each migration once");
}

/// Each `sslmode` encrypts and checks what libpq's does, against the test server, which offers
/// TLS with a certificate for `localhost` (`hack/postgres.sh`).
#[tokio::test]
async fn each_sslmode_encrypts_and_checks_what_libpq_does() {
    let ca =
        std::env::var("HOOKLINE_DATABASE_CA").expect("HOOKLINE_DATABASE_CA (hack/postgres.sh up prints it)");
    let database = url::Url::parse(&crate::store::contract_tests::fresh_database().await).expect("URL");
    let url = |host: &str, options: &str| {
        let mut url = database.clone();
        url.set_host(Some(host)).expect("host");
        url.set_query(Some(&options.replace("CA", &ca)));
        url.to_string()
    };
    let encrypted = async |url: String| -> Result<bool, String> {
        let store = PostgresStore::connect(&url, 2, "tls-test").await.map_err(|e| Chain(&e).to_string())?;
        let client = store.pool.get().await.expect("connection");
        let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await;
        Ok(row.expect("pg_stat_ssl").get(0))
    };
    for (host, options, expected) in [
        ("127.0.0.1", "", Some(true)),
        ("127.0.0.1", "sslmode=disable", Some(false)),
        ("127.0.0.1", "sslmode=require", Some(true)),
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert=CA", Some(true)),
        ("localhost", "sslmode=verify-full&sslrootcert=CA", Some(true)),
        // The certificate names localhost, not the address.
        ("127.0.0.1", "sslmode=verify-full&sslrootcert=CA", None),
        ("127.0.0.1", "sslmode=require&sslrootcert=CA", Some(true)),
        // A throwaway CA is not among the system's roots.
        ("localhost", "sslmode=verify-full", None),
    ] {
        let outcome = encrypted(url(host, options)).await;
        match expected {
            Some(tls) => assert_eq!(outcome, Ok(tls), "{host} {options}"),
            None => {
                let e = outcome.expect_err(&format!("{host} {options} must be refused"));
                assert!(e.contains("certificate") || e.contains("Certificate"), "{host} {options}: {e}");
            }
        }
    }
}
