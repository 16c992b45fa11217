//! The flags of `hookline run` and `hookline publish`, each with its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use ipnet::IpNet;

#[derive(Parser)]
pub struct PublishArgs {
    /// Base URL of the ingest Service, e.g. http://hookline-ingest.hookline.svc:8080.
    #[arg(long, env = "HOOKLINE_INGEST_URL")]
    pub url: String,
    /// The namespace to publish in.
    #[arg(long)]
    pub namespace: String,
    /// CloudEvents `type`.
    #[arg(long = "type")]
    pub event_type: String,
    /// CloudEvents `source`.
    #[arg(long, default_value = "/hookline-publish")]
    pub source: String,
    /// CloudEvents `id` (default: one made from the time and process id).
    #[arg(long)]
    pub id: Option<String>,
    /// JSON data of the event.
    #[arg(long)]
    pub data: Option<String>,
    /// File holding the bearer token; `none` sends none.
    #[arg(long, default_value = hookline::publisher::SERVICE_ACCOUNT_TOKEN)]
    pub token_file: String,
}

#[derive(Parser)]
pub struct RunArgs {
    /// Which store keeps events, jobs and the delivery log: `sqlite` (a file in --data-dir, for one
    /// replica) or `postgres` (--database-url, which several replicas may share).
    #[arg(long, env = "HOOKLINE_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Where the SQLite store lives (WAL).
    #[arg(long, env = "HOOKLINE_DATA_DIR", default_value = "/var/lib/hookline")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL for `--store postgres`, e.g. `postgres://hookline:PASSWORD@db:5432/hookline`.
    /// Never logged; the tables go into the schema `hookline`.
    #[arg(long, env = "HOOKLINE_DATABASE_URL", hide_env_values = true, required_if_eq("store", "postgres"))]
    pub database_url: Option<String>,
    /// PEM file of the roots that sign PostgreSQL's certificate (e.g. a CloudNativePG cluster's
    /// `<cluster>-ca` Secret, mounted). Set, the URL gets it as `sslrootcert` and, without an
    /// `sslmode` of its own, `sslmode=verify-full`: TLS, with a certificate naming the host.
    #[arg(long, env = "HOOKLINE_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Most connections this replica opens to PostgreSQL.
    #[arg(long, env = "HOOKLINE_DATABASE_POOL_SIZE", default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(2..=1000))]
    pub database_pool_size: usize,
    /// This replica's name among the replicas sharing PostgreSQL, in logs and in PostgreSQL's
    /// `application_name` (default: the pod's name, which the chart passes as POD_NAME, else the
    /// host name).
    #[arg(long, env = "POD_NAME")]
    pub replica_name: Option<String>,
    /// How long a replica's claim on its subscriptions holds without renewal (postgres). Another
    /// replica takes them over this long after a replica vanished; no attempt outlives it, so
    /// keep it above the longest `timeoutSeconds` (30s) plus a few renewals.
    #[arg(long, env = "HOOKLINE_LEASE_DURATION", default_value = "45s", value_parser = lease_duration)]
    pub lease_duration: Duration,
    /// Address of the ingest and API server.
    #[arg(long, env = "HOOKLINE_INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub ingest_addr: SocketAddr,
    /// How publishers are authenticated: `kubernetes` (TokenReview + SubjectAccessReview) or `none`.
    #[arg(long, env = "HOOKLINE_INGEST_AUTH", value_enum, default_value_t = IngestAuth::Kubernetes)]
    pub ingest_auth: IngestAuth,
    /// Extra destinations the SSRF guard lets through (repeatable), e.g. in-cluster service ranges.
    #[arg(long = "allow-cidr", env = "HOOKLINE_ALLOW_CIDR", value_delimiter = ',')]
    pub allow_cidr: Vec<IpNet>,
    /// Base URL under which endpoints reach the ingest server (validation URLs are built on it),
    /// e.g. `https://hookline.example.com`. Without it only synchronous validation answers work.
    #[arg(long, env = "HOOKLINE_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// Largest accepted event in bytes (at most 1 MiB, so that a dead letter fits in etcd).
    #[arg(long, env = "HOOKLINE_MAX_EVENT_BYTES", default_value_t = 262_144,
          value_parser = RangedU64ValueParser::<usize>::new().range(1024..=hookline::event::limits::DATA as u64))]
    pub max_event_bytes: usize,
    /// Memory for the events of queued jobs, in bytes, shared fairly by all subscriptions; past
    /// it, attempts read their events from the store.
    #[arg(long, env = "HOOKLINE_EVENT_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub event_cache_bytes: usize,
    /// Bytes kept free for the store (on its volume, or reusable inside its files): below it,
    /// publishing is refused with 507 so that what is queued can still be delivered and recorded.
    #[arg(long, env = "HOOKLINE_MIN_FREE_DISK", default_value_t = 128 * 1024 * 1024)]
    pub min_free_disk: u64,
    /// How long a client of the ingest and operations servers has to send a request's headers
    /// (also the next request's, on a connection kept alive), and again its body; a connection
    /// past it is closed (headers) or answered 408 (body).
    #[arg(long, env = "HOOKLINE_READ_TIMEOUT", default_value = "30s", value_parser = read_timeout)]
    pub read_timeout: Duration,
    /// Open connections each server (ingest, operations) holds at most; one more is answered 503.
    #[arg(long, env = "HOOKLINE_MAX_CONNECTIONS", default_value_t = 2048,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Open connections one client address holds at most on each server; one more is answered
    /// 503. Raise it when a proxy or mesh sidecar in front of Hookline gives every client its address.
    #[arg(long, env = "HOOKLINE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_client: usize,
    /// How long ingest goes on serving after SIGTERM, with `/readyz` failing and every answer
    /// closing its connection, before the ordered shutdown begins: the time Kubernetes needs to
    /// take the pod out of its Services, so publishers are not refused meanwhile (the chart sets 5s).
    #[arg(long, env = "HOOKLINE_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// Least time between two delivery-status writes of one subscription.
    #[arg(long, env = "HOOKLINE_STATUS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
    /// Delivery-status writes per second across all subscriptions (per replica). A `Healthy`
    /// transition is written first; counters are refreshed in turn as the budget allows.
    #[arg(long, env = "HOOKLINE_STATUS_WRITES_PER_SECOND", default_value_t = 10.0, value_parser = positive_rate)]
    pub status_writes_per_second: f64,
    /// How long a published `source` + `id` is remembered to drop re-deliveries.
    #[arg(long, env = "HOOKLINE_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,
    /// How long delivery attempts are kept in the delivery log.
    #[arg(long, env = "HOOKLINE_DELIVERY_LOG_RETENTION", default_value = "72h", value_parser = humantime::parse_duration)]
    pub delivery_log_retention: Duration,
    /// Address of the operations server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "HOOKLINE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "HOOKLINE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Permit plain `http://` endpoints.
    #[arg(long, env = "HOOKLINE_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Accept subscriptions with `spec.validation.method: None` (no endpoint ownership proof).
    #[arg(long, env = "HOOKLINE_ALLOW_UNVERIFIED_ENDPOINTS")]
    pub allow_unverified_endpoints: bool,
    /// FailedEvents kept per subscription; past it, dead letters are dropped and counted.
    #[arg(long, env = "HOOKLINE_FAILED_EVENT_CAP", default_value_t = 1000)]
    pub failed_event_cap: u64,
    /// FailedEvents older than this are deleted.
    #[arg(long, env = "HOOKLINE_FAILED_EVENT_TTL", default_value = "168h", value_parser = humantime::parse_duration)]
    pub failed_event_ttl: Duration,
    /// Log format.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export spans (publish, delivery attempts, handshakes) to this OTLP/HTTP collector, e.g.
    /// `http://otel-collector:4318` (JSON to `<url>/v1/traces`). Off when unset.
    #[arg(long, env = "HOOKLINE_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IngestAuth {
    Kubernetes,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A lease of at least 5 seconds.
fn lease_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(5) {
        return Err(format!("{s:?} is shorter than 5s"));
    }
    Ok(d)
}

/// A read timeout of 100ms to 1h.
fn read_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{s:?} is not between 100ms and 1h"));
    }
    Ok(d)
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
