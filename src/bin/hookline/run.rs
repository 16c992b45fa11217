//! `hookline run`: build each part with the few dependencies it uses, start them, and stop them
//! in order on a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::runtime::events::Recorder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use hookline::catalog::Catalog;
use hookline::cluster::Membership;
use hookline::cluster_tasks::ClusterTasks;
use hookline::controller::{self, Policy};
use hookline::deadletter::{self, Limits};
use hookline::delivery::budget::EventBudget;
use hookline::delivery::status::{StatusBoard, WriteBudget, run_writer};
use hookline::delivery::{Dispatchers, Parts};
use hookline::ingest::{self, Ingest, IngestConfig, auth::Auth};
use hookline::metrics::Metrics;
use hookline::outbound::clients::Clients;
use hookline::outbound::secrets::SecretCache;
use hookline::outbound::ssrf::Guard;
use hookline::ownership::Ownership;
use hookline::registry::{Readiness, Registry};
use hookline::report::Chain;
use hookline::server::{self, ConnectionLimits};
use hookline::store::{PostgresStore, SqliteStore, Store};
use hookline::telemetry;
use hookline::verify::Verifier;

use crate::args::{IngestAuth, RunArgs, StoreKind};

/// Run the operator until a stop signal, then shut down in order.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::init_logging(args.log_format);
    // The exporter's HTTP client is reqwest's, built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tracing = telemetry::init(args.otlp_endpoint.as_deref())?;
    if let Some(endpoint) = &args.otlp_endpoint {
        info!(%endpoint, "exporting spans over OTLP/HTTP");
    }
    let metrics = Arc::new(Metrics::default());
    let client = kube_client(metrics.clone()).await?;
    let policy = Policy { allow_http: args.allow_http, allow_unverified: args.allow_unverified_endpoints };
    if policy.allow_unverified {
        warn!("--allow-unverified-endpoints: subscriptions may skip the endpoint ownership handshake");
    }
    let shutdown = CancellationToken::new();
    let (readiness, registry, catalog) = (Readiness::default(), Registry::default(), Catalog::default());

    let limits = ConnectionLimits {
        read_timeout: args.read_timeout,
        max_connections: args.max_connections,
        max_per_client: args.max_connections_per_client,
    };
    let (ops_addr, ops_server) =
        server::bind(args.metrics_addr, limits, metrics.clone(), readiness.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the operations server to {}", args.metrics_addr))?;
    info!(addr = %ops_addr, "operations server listening");
    let ops = tokio::spawn(ops_server);

    let name = replica_name(&args);
    let (store, shared_store) = open_store(&args, &name).await?;
    // With SQLite this replica is the only one and owns everything; with PostgreSQL it owns the
    // share of the work its membership claims, and hands new jobs of the rest to their owners.
    let (ownership, forward, shared) = match shared_store {
        None => (Ownership::solo(), None, None),
        Some(store) => {
            let (forward, forwarded) = tokio::sync::mpsc::unbounded_channel();
            let member = format!("{name}/{:016x}", rand::random::<u64>());
            (Ownership::shared(member), Some(forward), Some((store, forwarded)))
        }
    };
    let guard = Arc::new(Guard::new(args.allow_cidr.clone()));
    let secrets = SecretCache::new(client.clone());
    let clients = Clients::new(guard.clone(), secrets.clone()).context("building the HTTP client")?;
    if !args.allow_cidr.is_empty() {
        warn!(cidrs = ?args.allow_cidr, "the SSRF guard lets these extra networks through");
    }
    let board = StatusBoard::default();
    let dead_letters_waiting = Arc::new(Notify::new());
    let dispatchers = Dispatchers::new(Parts {
        store: store.clone(),
        clients: clients.clone(),
        secrets: secrets.clone(),
        board: board.clone(),
        metrics: metrics.clone(),
        budget: EventBudget::new(args.event_cache_bytes, metrics.event_cache_bytes()),
        dead_letters_waiting: dead_letters_waiting.clone(),
        ownership: ownership.clone(),
        forward,
        recorder: Recorder::new(client.clone(), hookline::k8s::reporter()),
    });

    let ingest = Ingest {
        config: IngestConfig {
            max_event_bytes: args.max_event_bytes,
            min_free_disk: args.min_free_disk,
            limits,
        },
        auth: ingest_auth(&args, &client),
        registry: registry.clone(),
        dispatchers: dispatchers.clone(),
        readiness: readiness.clone(),
        client: client.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        catalog: catalog.clone(),
    };
    let draining = CancellationToken::new();
    let (ingest_addr, ingest_server) =
        ingest::bind(args.ingest_addr, ingest, draining.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the ingest server to {}", args.ingest_addr))?;
    info!(addr = %ingest_addr, "ingest server listening");
    let ingest = tokio::spawn(ingest_server);
    // Every replica checks publishes, so every replica follows the EventTypes.
    let catalog_follower = tokio::spawn(controller::event_types::follow(
        client.clone(),
        args.watch_namespace.clone(),
        catalog.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let dispatch_stop = CancellationToken::new();
    let dispatch = tokio::spawn(dispatchers.clone().run(registry.clone(), dispatch_stop.clone()));
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(run_writer(
        board.clone(),
        client.clone(),
        metrics.clone(),
        registry.clone(),
        ownership.clone(),
        WriteBudget { interval: args.status_interval, per_second: args.status_writes_per_second },
        writer_stop.clone(),
    ));
    let cluster_tasks = ClusterTasks {
        dead_letters: deadletter::Parts {
            client: client.clone(),
            registry: registry.clone(),
            readiness: readiness.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            dispatchers: dispatchers.clone(),
            board,
            dead_letters_waiting,
            limits: Limits { cap: args.failed_event_cap, ttl: args.failed_event_ttl },
        },
        namespace: args.watch_namespace.clone(),
        log_retention: args.delivery_log_retention,
        dedup_window: args.dedup_window,
    };
    let cluster_tasks = tokio::spawn(cluster_tasks.run(ownership.clone(), shutdown.clone()));
    let (acquired_tx, mut acquired_rx) = tokio::sync::mpsc::unbounded_channel();
    let leave = CancellationToken::new();
    let membership = shared.map(|(store, forwarded)| {
        let membership = Membership {
            store,
            ownership: ownership.clone(),
            registry: registry.clone(),
            readiness: readiness.clone(),
            dispatchers: dispatchers.clone(),
            name,
            lease: args.lease_duration,
            acquired: acquired_tx,
        };
        tokio::spawn(membership.run(forwarded, leave.clone()))
    });

    if args.public_url.is_none() {
        warn!(
            "no --public-url: validation events carry no validationUrl, so endpoints must answer synchronously"
        );
    }
    let verifier = Verifier {
        store,
        clients,
        guard,
        secrets,
        public_url: args.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
    };
    let ctx = Arc::new(controller::Context::new(controller::Parts {
        client,
        policy,
        registry,
        metrics,
        dispatchers,
        verifier,
        ownership,
        catalog,
    }));
    tokio::spawn(cancel_on_signal(
        Stopping { readiness: readiness.clone(), draining, delay: args.shutdown_delay },
        shutdown.clone(),
    ));
    info!(namespace = args.watch_namespace.as_deref().unwrap_or("<all>"), "starting controller");
    let acquired = futures::stream::poll_fn(move |cx| acquired_rx.poll_recv(cx));
    controller::run(
        ctx,
        args.watch_namespace.as_deref(),
        readiness,
        acquired,
        shutdown.clone().cancelled_owned(),
    )
    .await;

    // Stop taking events, finish in-flight deliveries, flush status one last time, then hand
    // this replica's subscriptions over to the others.
    shutdown.cancel();
    ingest.await.context("ingest server task")?.context("ingest server")?;
    catalog_follower.await.context("EventType watch task")?;
    dispatch_stop.cancel();
    dispatch.await.context("dispatchers task")?;
    cluster_tasks.await.context("cluster-wide tasks")?;
    writer_stop.cancel();
    writer.await.context("status writer task")?;
    leave.cancel();
    if let Some(membership) = membership {
        membership.await.context("membership task")?;
    }
    ops.await.context("operations server task")?.context("operations server")?;
    tokio::task::spawn_blocking(move || tracing.shutdown()).await.context("span export")?;
    info!("stopped");
    Ok(())
}

/// How publishers and log readers are authenticated (`--ingest-auth`).
fn ingest_auth(args: &RunArgs, client: &kube::Client) -> Auth {
    match args.ingest_auth {
        IngestAuth::Kubernetes => Auth::kubernetes(client.clone()),
        IngestAuth::None => {
            warn!(
                "--ingest-auth none: ANYONE who can reach the ingest port may publish events and read delivery logs"
            );
            Auth::None
        }
    }
}

/// The Kubernetes client (kubeconfig from the usual places), counting every request it sends in
/// `hookline_api_requests_total`, so API load can be watched and tested (e.g. no hot loop).
async fn kube_client(metrics: Arc<Metrics>) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context("finding the Kubernetes API server")?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.api_request(req.method());
        req
    });
    let builder =
        kube::client::ClientBuilder::try_from(config).context("configuring the Kubernetes client")?;
    Ok(builder.with_layer(&count).build())
}

/// This replica's name: `--replica-name`, else the host name.
fn replica_name(args: &RunArgs) -> String {
    args.replica_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "hookline".into())
    })
}

/// The store, and the PostgreSQL store again when replicas share it; `name` is this replica's.
async fn open_store(
    args: &RunArgs,
    name: &str,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<PostgresStore>>)> {
    match (args.store, &args.database_url) {
        (StoreKind::Sqlite, _) => {
            let store = SqliteStore::open(&args.data_dir)
                .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
            info!(data_dir = %args.data_dir.display(), "SQLite store open");
            Ok((Arc::new(store), None))
        }
        (StoreKind::Postgres, Some(url)) => {
            let application = format!("hookline/{name}");
            let url = match &args.database_ca_file {
                Some(ca) => hookline::store::with_ca_file(url, &ca.to_string_lossy())?,
                None => url.clone(),
            };
            let store = Arc::new(PostgresStore::connect(&url, args.database_pool_size, &application).await?);
            info!(pool_size = args.database_pool_size, "PostgreSQL store open");
            Ok((store.clone(), Some(store)))
        }
        (StoreKind::Postgres, None) => anyhow::bail!("--store postgres needs --database-url"),
    }
}

/// What a stop signal sets off before the ordered shutdown.
struct Stopping {
    readiness: Readiness,
    draining: CancellationToken,
    /// `--shutdown-delay`.
    delay: Duration,
}

async fn cancel_on_signal(stopping: Stopping, shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!(error = %Chain(&e), "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stopping.readiness.set_stopping();
    stopping.draining.cancel();
    if !stopping.delay.is_zero() {
        info!(delay = ?stopping.delay, "shutdown requested: not ready, still taking events for the shutdown delay");
        // A second signal skips the rest of the delay.
        tokio::select! {
            _ = tokio::time::sleep(stopping.delay) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    info!("shutdown requested");
    shutdown.cancel();
}
