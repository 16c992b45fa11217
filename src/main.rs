//! The `hookline` binary: wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use hookline::catalog::Catalog;
use hookline::cluster::{self, Membership};
use hookline::controller::{self, Policy};
use hookline::deadletter::{self, FailedEventContext, Limits};
use hookline::delivery::budget::EventBudget;
use hookline::delivery::status::{StatusBoard, WriteBudget, run_writer};
use hookline::delivery::{Dispatchers, Parts};
use hookline::ingest::{self, Ingest, IngestConfig, auth::Auth};
use hookline::metrics::Metrics;
use hookline::outbound::clients::Clients;
use hookline::outbound::secrets::SecretCache;
use hookline::outbound::ssrf::Guard;
use hookline::ownership::{CLUSTER_TASKS, Ownership};
use hookline::registry::{Readiness, Registry};
use hookline::report::Chain;
use hookline::server;
use hookline::store::{PostgresStore, SqliteStore, Store};
use hookline::telemetry;
use hookline::verify::Verifier;
use ipnet::IpNet;
use kube::runtime::events::Recorder;
use tokio::sync::Notify;

/// mimalloc instead of glibc's malloc: per-thread free lists instead of arena locks, which the
/// delivery path's many small, short-lived allocations contended on (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hookline: webhook delivery for Kubernetes.
#[derive(Parser)]
#[command(name = "hookline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: controller, dispatchers, ingest and operations servers.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (the source of `crds/`).
    Crds,
    /// Print the OpenAPI 3.1 document of the HTTP API (the source of `docs/openapi.json`).
    Openapi,
    /// Print the version.
    Version,
    /// Publish one CloudEvent to a Hookline ingest (with the pod's ServiceAccount token) and wait
    /// for it to be accepted: a smoke test from inside the cluster (the chart's `helm test`).
    Publish(PublishArgs),
}

#[derive(Parser)]
struct PublishArgs {
    /// Base URL of the ingest Service, e.g. http://hookline-ingest.hookline.svc:8080.
    #[arg(long, env = "HOOKLINE_INGEST_URL")]
    url: String,
    /// The namespace to publish in.
    #[arg(long)]
    namespace: String,
    /// CloudEvents `type`.
    #[arg(long = "type")]
    event_type: String,
    /// CloudEvents `source`.
    #[arg(long, default_value = "/hookline-publish")]
    source: String,
    /// CloudEvents `id` (default: one made from the time and process id).
    #[arg(long)]
    id: Option<String>,
    /// JSON data of the event.
    #[arg(long)]
    data: Option<String>,
    /// File holding the bearer token; `none` sends none.
    #[arg(long, default_value = hookline::publisher::SERVICE_ACCOUNT_TOKEN)]
    token_file: String,
}

#[derive(Parser)]
struct RunArgs {
    /// Which store keeps events, jobs and the delivery log: `sqlite` (a file in --data-dir, for one
    /// replica) or `postgres` (--database-url, which several replicas may share).
    #[arg(long, env = "HOOKLINE_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Where the SQLite store lives (WAL).
    #[arg(long, env = "HOOKLINE_DATA_DIR", default_value = "/var/lib/hookline")]
    data_dir: PathBuf,
    /// PostgreSQL URL for `--store postgres`, e.g. `postgres://hookline:PASSWORD@db:5432/hookline`.
    /// Never logged; the tables go into the schema `hookline`.
    #[arg(long, env = "HOOKLINE_DATABASE_URL", hide_env_values = true, required_if_eq("store", "postgres"))]
    database_url: Option<String>,
    /// PEM file of the roots that sign PostgreSQL's certificate (e.g. a CloudNativePG cluster's
    /// `<cluster>-ca` Secret, mounted). Set, the URL gets it as `sslrootcert` and, without an
    /// `sslmode` of its own, `sslmode=verify-full`: TLS, with a certificate naming the host.
    #[arg(long, env = "HOOKLINE_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// Most connections this replica opens to PostgreSQL.
    #[arg(long, env = "HOOKLINE_DATABASE_POOL_SIZE", default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(2..=1000))]
    database_pool_size: usize,
    /// This replica's name among the replicas sharing PostgreSQL, in logs and in PostgreSQL's
    /// `application_name` (default: the pod's name, which the chart passes as POD_NAME, else the
    /// host name).
    #[arg(long, env = "POD_NAME")]
    replica_name: Option<String>,
    /// How long a replica's claim on its subscriptions holds without renewal (postgres). Another
    /// replica takes them over this long after a replica vanished; no attempt outlives it, so
    /// keep it above the longest `timeoutSeconds` (30s) plus a few renewals.
    #[arg(long, env = "HOOKLINE_LEASE_DURATION", default_value = "45s", value_parser = lease_duration)]
    lease_duration: Duration,
    /// Address of the ingest and API server.
    #[arg(long, env = "HOOKLINE_INGEST_ADDR", default_value = "0.0.0.0:8080")]
    ingest_addr: SocketAddr,
    /// How publishers are authenticated: `kubernetes` (TokenReview + SubjectAccessReview) or `none`.
    #[arg(long, env = "HOOKLINE_INGEST_AUTH", value_enum, default_value_t = IngestAuth::Kubernetes)]
    ingest_auth: IngestAuth,
    /// Extra destinations the SSRF guard lets through (repeatable), e.g. in-cluster service ranges.
    #[arg(long = "allow-cidr", env = "HOOKLINE_ALLOW_CIDR", value_delimiter = ',')]
    allow_cidr: Vec<IpNet>,
    /// Base URL under which endpoints reach the ingest server (validation URLs are built on it),
    /// e.g. `https://hookline.example.com`. Without it only synchronous validation answers work.
    #[arg(long, env = "HOOKLINE_PUBLIC_URL")]
    public_url: Option<url::Url>,
    /// Largest accepted event in bytes (at most 1 MiB, so that a dead letter fits in etcd).
    #[arg(long, env = "HOOKLINE_MAX_EVENT_BYTES", default_value_t = 262_144,
          value_parser = RangedU64ValueParser::<usize>::new().range(1024..=hookline::event::limits::DATA as u64))]
    max_event_bytes: usize,
    /// Memory for the events of queued jobs, in bytes, shared fairly by all subscriptions; past
    /// it, attempts read their events from the store.
    #[arg(long, env = "HOOKLINE_EVENT_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    event_cache_bytes: usize,
    /// Bytes kept free for the store (on its volume, or reusable inside its files): below it,
    /// publishing is refused with 507 so that what is queued can still be delivered and recorded.
    #[arg(long, env = "HOOKLINE_MIN_FREE_DISK", default_value_t = 128 * 1024 * 1024)]
    min_free_disk: u64,
    /// How long ingest goes on serving after SIGTERM, with `/readyz` failing and every answer
    /// closing its connection, before the ordered shutdown begins: the time Kubernetes needs to
    /// take the pod out of its Services, so publishers are not refused meanwhile (the chart sets 5s).
    #[arg(long, env = "HOOKLINE_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
    /// Least time between two delivery-status writes of one subscription.
    #[arg(long, env = "HOOKLINE_STATUS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Delivery-status writes per second across all subscriptions (per replica). A `Healthy`
    /// transition is written first; counters are refreshed in turn as the budget allows.
    #[arg(long, env = "HOOKLINE_STATUS_WRITES_PER_SECOND", default_value_t = 10.0, value_parser = positive_rate)]
    status_writes_per_second: f64,
    /// How long a published `source` + `id` is remembered to drop re-deliveries.
    #[arg(long, env = "HOOKLINE_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// How long delivery attempts are kept in the delivery log.
    #[arg(long, env = "HOOKLINE_DELIVERY_LOG_RETENTION", default_value = "72h", value_parser = humantime::parse_duration)]
    delivery_log_retention: Duration,
    /// Address of the operations server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "HOOKLINE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "HOOKLINE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Permit plain `http://` endpoints.
    #[arg(long, env = "HOOKLINE_ALLOW_HTTP")]
    allow_http: bool,
    /// Accept subscriptions with `spec.validation.method: None` (no endpoint ownership proof).
    #[arg(long, env = "HOOKLINE_ALLOW_UNVERIFIED_ENDPOINTS")]
    allow_unverified_endpoints: bool,
    /// FailedEvents kept per subscription; past it, dead letters are dropped and counted.
    #[arg(long, env = "HOOKLINE_FAILED_EVENT_CAP", default_value_t = 1000)]
    failed_event_cap: u64,
    /// FailedEvents older than this are deleted.
    #[arg(long, env = "HOOKLINE_FAILED_EVENT_TTL", default_value = "168h", value_parser = humantime::parse_duration)]
    failed_event_ttl: Duration,
    /// Log format.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export spans (publish, delivery attempts, handshakes) to this OTLP/HTTP collector, e.g.
    /// `http://otel-collector:4318` (JSON to `<url>/v1/traces`). Off when unset.
    #[arg(long, env = "HOOKLINE_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IngestAuth {
    Kubernetes,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", hookline::api::crds_yaml().context("rendering the CRDs")?),
        Command::Openapi => print!("{}", hookline::ingest::openapi::document()),
        Command::Version => println!("hookline {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => run(*args).await?,
        Command::Publish(args) => publish(args).await?,
    }
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let id = args.id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("publish-{}-{}", nanos.as_nanos(), std::process::id())
    });
    let publication = hookline::publisher::Publication {
        ingest_url: args.url,
        namespace: args.namespace,
        id,
        source: args.source,
        event_type: args.event_type,
        data: args.data,
        token_file: (args.token_file != "none").then_some(args.token_file),
    };
    let answer = hookline::publisher::publish(&publication).await.context("publishing")?;
    println!("{answer}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,kube=warn,tower=warn,hyper=warn,rustls_platform_verifier=off",
        )
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

/// A lease of at least 5 seconds.
fn lease_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(5) {
        return Err(format!("{s:?} is shorter than 5s"));
    }
    Ok(d)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
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
    let readiness = Readiness::default();
    let registry = Registry::default();
    let catalog = Catalog::default();

    let (ops_addr, ops_server) =
        server::bind(args.metrics_addr, metrics.clone(), readiness.clone(), shutdown.clone())
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

    let auth = match args.ingest_auth {
        IngestAuth::Kubernetes => Auth::kubernetes(client.clone()),
        IngestAuth::None => {
            warn!(
                "--ingest-auth none: ANYONE who can reach the ingest port may publish events and read delivery logs"
            );
            Auth::None
        }
    };
    let ingest = Ingest {
        config: IngestConfig { max_event_bytes: args.max_event_bytes, min_free_disk: args.min_free_disk },
        auth,
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
    // The cluster-wide tasks run on one replica at a time: FailedEvents (writer and controller),
    // the EventTypes' status and the store's upkeep.
    let limits = Limits { cap: args.failed_event_cap, ttl: args.failed_event_ttl };
    let cluster_tasks = {
        let (client, registry, store, metrics, dispatchers) =
            (client.clone(), registry.clone(), store.clone(), metrics.clone(), dispatchers.clone());
        let readiness = readiness.clone();
        let (namespace, retention, dedup) =
            (args.watch_namespace.clone(), args.delivery_log_retention, args.dedup_window);
        tokio::spawn(cluster::while_owned(ownership.clone(), CLUSTER_TASKS, shutdown.clone(), move |stop| {
            let fev_ctx = Arc::new(FailedEventContext {
                client: client.clone(),
                registry: registry.clone(),
                readiness: readiness.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                dispatchers: dispatchers.clone(),
                limits,
                backoff: Default::default(),
            });
            let (fev_cache, fev_controller) =
                deadletter::run_controller(fev_ctx, namespace.clone(), stop.clone().cancelled_owned());
            let writer = deadletter::Writer {
                client: client.clone(),
                registry: registry.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                board: board.clone(),
                dead_letters_waiting: dead_letters_waiting.clone(),
                cache: fev_cache,
                limits,
                recorder: Recorder::new(client.clone(), hookline::k8s::reporter()),
            };
            let prune = hookline::store::prune(store.clone(), retention, dedup, stop.clone());
            let event_types = controller::event_types::run_status(
                client.clone(),
                metrics.clone(),
                namespace.clone(),
                stop.clone(),
            );
            async move {
                tokio::join!(fev_controller, writer.run(stop), prune, event_types);
            }
        }))
    };
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

    let verifier = Verifier {
        store: store.clone(),
        clients,
        guard,
        secrets,
        public_url: args.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
    };
    if args.public_url.is_none() {
        warn!(
            "no --public-url: validation events carry no validationUrl, so endpoints must answer synchronously"
        );
    }
    let ctx = Arc::new(
        controller::Context::new(client, policy, registry, metrics, dispatchers, verifier, ownership)
            .with_catalog(catalog),
    );
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

/// An http(s) URL without query or fragment.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} is not an http(s) URL without query or fragment"));
    }
    Ok(s.to_string())
}

/// A rate above zero (writes per second).
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate above 0 (writes per second, e.g. 10 or 0.5)")),
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
