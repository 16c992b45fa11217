//! The `hookline` binary: parse the command line and hand over to the part that runs it.

mod args;
mod run;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use args::{LogFormat, PublishArgs, RunArgs};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", hookline::api::crds_yaml().context("rendering the CRDs")?),
        Command::Openapi => print!("{}", hookline::ingest::openapi::document()),
        Command::Version => println!("hookline {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => run::run(*args).await?,
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
