//! `keel`: the one command line. Argument parsing and wiring only; the work is in the
//! `keel-server` and `keel-trainer` crates.

mod bench;
mod demo;
mod train;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// candle allocates and frees large buffers on every op; mimalloc keeps them instead of
// returning them to the OS and faulting them back (≈1.5× faster training on these CPUs).
#[global_allocator]
static ALLOCATOR: keel_trainer::Allocator = keel_trainer::Allocator;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "A control room for language-model pre-training"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API, the pages and the live streams.
    Serve(ServeArgs),
    /// Start a server and a small proxy training run against it, and print the URL.
    Demo(DemoArgs),
    /// Train a proxy model, streaming its statistics to a keel server.
    Train(train::TrainArgs),
    /// Measure ingest, query and memory figures (see docs/performance.md).
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, env = "KEEL_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// SQLite database file, created if missing.
    #[arg(long, env = "KEEL_DB", default_value = "keel.db")]
    db: PathBuf,
    /// Operator and ingest token; a random one is made and printed when unset.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds without word from a trainer before its run shows as lost.
    #[arg(long, env = "KEEL_LOST_AFTER", default_value_t = 60)]
    lost_after: u64,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// SQLite database file for the demo (kept, so a second demo shows both runs).
    #[arg(long, default_value = "keel-demo.db")]
    pub db: PathBuf,
    /// The model and data of the demo run.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/proxy-small.toml"))]
    pub config: PathBuf,
    /// Steps to train (the config's own count when unset).
    #[arg(long)]
    pub steps: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => runtime()?.block_on(serve(args)),
        Cmd::Demo(args) => runtime()?.block_on(demo::run(args)),
        Cmd::Train(args) => train::run(args),
        Cmd::Bench(args) => bench::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancelled on the first Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = match args.token.filter(|t| !t.trim().is_empty()) {
        Some(t) => t,
        None => {
            let t = keel_server::auth::new_token()?;
            eprintln!("KEEL_TOKEN was not set; this server's token is: {t}");
            t
        }
    };
    let mut config = keel_server::Config::new(args.db, token);
    config.addr = args.addr;
    config.lost_after = std::time::Duration::from_secs(args.lost_after.max(1));
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    eprintln!(
        "keel is serving http://{} (database {})",
        listener.local_addr()?,
        config.db.display()
    );
    keel_server::serve(config, listener, shutdown_on_signal()).await
}
