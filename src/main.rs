//! The `hookline` binary: wiring only.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use hookline::controller::{self, Policy};
use hookline::metrics::Metrics;
use hookline::registry::Registry;
use hookline::server::{self, Readiness};

/// Hookline: webhook delivery for Kubernetes.
#[derive(Parser)]
#[command(name = "hookline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: controller and operations server.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (the source of `crds/`).
    Crds,
    /// Print the version.
    Version,
}

#[derive(Parser)]
struct RunArgs {
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
    /// Log format.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
        Command::Version => println!("hookline {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => run(args).await?,
    }
    Ok(())
}

fn init_telemetry(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_telemetry(args.log_format);
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API server")?;
    let policy = Policy { allow_http: args.allow_http, allow_unverified: args.allow_unverified_endpoints };
    if policy.allow_unverified {
        warn!("--allow-unverified-endpoints: subscriptions may skip the endpoint ownership handshake");
    }
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let registry = Registry::default();

    let (ops_addr, ops_server) =
        server::bind(args.metrics_addr, metrics.clone(), readiness.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the operations server to {}", args.metrics_addr))?;
    info!(addr = %ops_addr, "operations server listening");
    let ops = tokio::spawn(ops_server);

    let ctx = Arc::new(controller::Context::new(client, policy, registry, metrics));
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    info!(namespace = args.watch_namespace.as_deref().unwrap_or("<all>"), "starting controller");
    controller::run(ctx, args.watch_namespace.as_deref(), readiness, shutdown.clone().cancelled_owned())
        .await;

    shutdown.cancel();
    ops.await.context("operations server task")?.context("operations server")?;
    info!("stopped");
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutdown requested");
    shutdown.cancel();
}
