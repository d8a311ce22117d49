//! `keel`: the one command line. Argument parsing and wiring only; the work is in the
//! `keel-server` and `keel-trainer` crates.

mod ablate;
mod bench;
mod configs;
mod demo;
mod launch;
mod slurm;
mod sync;
mod tensorboard;
mod train;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// candle allocates and frees large buffers on every op; mimalloc keeps them instead of
// returning them to the OS and faulting them back (≈1.5× faster training on these CPUs).
#[global_allocator]
static ALLOCATOR: keel_trainer::Allocator = keel_trainer::Allocator;

/// `0.1.0 (a1b2c3d4e5f6)`: the version and the git revision it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KEEL_GIT_REV"), ")");

#[derive(Parser)]
#[command(
    name = "keel",
    version = VERSION,
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
    /// Train every variant of an ablation grid, one run each, all in one group.
    Ablate(ablate::AblateArgs),
    /// List the configs and ablation grids built into keel, or print one.
    Configs(configs::ConfigsArgs),
    /// Verify a database's summaries against its stored steps, offline (and repair them).
    Check(CheckArgs),
    /// A consistent copy of a SQLite database, also while a server writes to it.
    Backup(BackupArgs),
    /// Copy a whole database to another: SQLite to PostgreSQL, or back; resumable, verified.
    Migrate(MigrateArgs),
    /// Re-send what trainers left undelivered in a checkpoint folder (spilled steps, final
    /// statuses) to a keel server.
    Sync(sync::SyncArgs),
    /// Import runs logged by other tools into a keel server.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Measure ingest, query and memory figures (see docs/performance.md).
    Bench(bench::BenchArgs),
    /// Named people and their roles (viewer, operator, admin), each with a token of their own.
    Users(users::UsersArgs),
}

#[derive(Subcommand)]
enum ImportCmd {
    /// TensorBoard event files: one run per directory of `events.out.tfevents.*` files
    /// (docs/tensorboard.md).
    Tensorboard(tensorboard::TensorboardArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, env = "KEEL_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The database: a SQLite file (created if missing) or a PostgreSQL URL
    /// (`postgres://user@host/db`), which several servers can share.
    #[arg(long, env = "KEEL_DB", default_value = "keel.db")]
    db: keel_server::storage::Location,
    /// Operator and ingest token; a random one is made and printed when unset.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds without word from a trainer before its run shows as lost.
    #[arg(long, env = "KEEL_LOST_AFTER", default_value_t = 60)]
    lost_after: u64,
    /// Hours a browser sign-in lasts.
    #[arg(long, env = "KEEL_SESSION_HOURS", default_value_t = 12)]
    session_hours: u64,
    /// Mark the session cookie `Secure` (when the server is reached over HTTPS, e.g. behind a
    /// TLS proxy).
    #[arg(long, env = "KEEL_SECURE_COOKIE")]
    secure_cookie: bool,
    /// Serve the pages' scripts and styles from this folder instead of the copies built into
    /// keel (for working on them without rebuilding).
    #[arg(long, env = "KEEL_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// A folder of ablation grids (`<name>.toml` files) the runs page can launch, beside the
    /// built-in ones.
    #[arg(long, env = "KEEL_GRIDS")]
    grids: Option<PathBuf>,
    /// Trainer processes the server runs at once for launched grids, over all launches (the
    /// rest wait in a queue); 0 turns launching from the browser off. Under SLURM the
    /// scheduler decides instead.
    #[arg(long, env = "KEEL_MAX_TRAINERS", default_value_t = 1)]
    max_trainers: usize,
    /// Where launched variants train: `local` (child processes of this server) or `slurm`
    /// (one batch job each, through sbatch).
    #[arg(long, env = "KEEL_LAUNCHER", value_enum, default_value_t = LauncherKind::Local)]
    launcher: LauncherKind,
    #[command(flatten)]
    sbatch: slurm::SbatchArgs,
    /// With --launcher slurm: the folder the jobs write their output to, which the compute
    /// nodes can write and this server can read (a shared filesystem on a real cluster).
    #[arg(long, env = "KEEL_SLURM_LOGS", default_value = "slurm-logs")]
    slurm_logs: PathBuf,
    /// With --launcher slurm: seconds between polls of the jobs' states (one squeue call).
    #[arg(long, default_value_t = 2.0)]
    slurm_poll: f64,
    /// Reads need a sign-in too (a token, or a browser signed in with one): pages, the API
    /// and the live streams. By default anyone who reaches the server can read.
    #[arg(long, env = "KEEL_PRIVATE")]
    private: bool,
    /// The server's URL as trainers on other machines and webhook receivers reach it (e.g.
    /// http://head-node:8080); the listening address when unset.
    #[arg(long, env = "KEEL_PUBLIC_URL", value_parser = public_url)]
    public_url: Option<String>,
    /// This server's name among several on one PostgreSQL database: it resumes the launches
    /// it started and shows the others' (default: `<host name>:<port>`).
    #[arg(long, env = "KEEL_REPLICA", value_parser = replica_name)]
    replica: Option<String>,
    /// A webhook that gets incidents as they open and rule firings, as JSON that
    /// Slack-compatible receivers take (`{"text": …}`); repeat for more. Runs add their own
    /// in their config's `alerts.webhooks`.
    #[arg(long = "webhook", value_name = "URL", value_parser = webhook_url)]
    webhooks: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LauncherKind {
    Local,
    Slurm,
}

fn public_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
        return Err(format!(
            "`{s}` is not a server's base URL (http://host:port)"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

fn webhook_url(s: &str) -> Result<String, String> {
    match s.starts_with("http://") || s.starts_with("https://") {
        true => Ok(s.to_owned()),
        false => Err(format!("`{s}` is not an http:// or https:// URL")),
    }
}

fn replica_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.len() {
        1..=100 if s.chars().all(|c| c.is_ascii_graphic()) => Ok(s.to_owned()),
        _ => Err("a replica's name is 1 to 100 visible ASCII characters".into()),
    }
}

/// A `--db` that must be a SQLite file (`keel backup`).
fn sqlite_file(s: &str) -> Result<PathBuf, String> {
    match s.parse()? {
        keel_server::storage::Location::Sqlite(path) => Ok(path),
        keel_server::storage::Location::Postgres(_) => Err(
            "keel backup copies a SQLite file; back PostgreSQL up with pg_dump (see \
             docs/postgres.md)"
                .into(),
        ),
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The database to check (a SQLite file or a PostgreSQL URL); it is only read, unless
    /// --repair.
    #[arg(long)]
    db: keel_server::storage::Location,
    /// Rewrite every summary that disagrees with its steps (not while a server serves the
    /// file).
    #[arg(long)]
    repair: bool,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The database to copy: a SQLite file or a postgres:// URL (no server may be writing
    /// to it).
    #[arg(long)]
    from: keel_server::storage::Location,
    /// Where to: a new SQLite file or an empty PostgreSQL database. Run again after an
    /// interruption, it goes on where it stopped.
    #[arg(long)]
    to: keel_server::storage::Location,
}

#[derive(clap::Args)]
struct BackupArgs {
    /// The SQLite database file to copy (a server may be running on it).
    #[arg(long, env = "KEEL_DB", default_value = "keel.db", value_parser = sqlite_file)]
    db: PathBuf,
    /// Where the copy goes: a new file (an existing one is never overwritten).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// SQLite database file for the demo (kept, so a second demo shows both runs).
    #[arg(long, default_value = "keel-demo.db")]
    pub db: PathBuf,
    /// Operator and ingest token, as for `keel serve`; a random one is made and printed when
    /// unset.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The model and data of the demo run: a built-in config's name or a TOML file.
    #[arg(long, default_value = "proxy-small")]
    pub config: PathBuf,
    /// Steps to train (the config's own count when unset).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Keep serving when the demo's trainer fails (by default keel demo then exits non-zero).
    #[arg(long)]
    pub keep_serving: bool,
    /// A folder of ablation grids the runs page can launch, beside the built-in ones.
    #[arg(long)]
    pub grids: Option<PathBuf>,
    /// Trainer processes run at once for launched grids, beside the demo's own run; 0 turns
    /// launching off.
    #[arg(long, default_value_t = 1)]
    pub max_trainers: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A trainer the server launched writes to a pipe the server reads; when the server
        // dies (SIGKILL), writes fail. Say nothing about it rather than panic on the report.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => {
            with_server_allocator();
            runtime()?.block_on(serve(args))
        }
        Cmd::Demo(args) => runtime()?.block_on(demo::run(args)),
        Cmd::Train(args) => {
            with_trainer_env();
            train::run(args)
        }
        Cmd::Ablate(args) => {
            with_trainer_env();
            ablate::run(args)
        }
        Cmd::Configs(args) => configs::run(args),
        Cmd::Check(args) => runtime()?.block_on(check(args)),
        Cmd::Backup(args) => runtime()?.block_on(backup(args)),
        Cmd::Migrate(args) => runtime()?.block_on(migrate(args)),
        Cmd::Sync(args) => sync::run(args),
        Cmd::Import(ImportCmd::Tensorboard(args)) => tensorboard::run(args),
        Cmd::Users(args) => runtime()?.block_on(users::run(args)),
        Cmd::Bench(args) => {
            // The trainer's figures are those of `keel train`'s own settings.
            if args.trains() {
                with_trainer_env();
            }
            bench::run(args)
        }
    }
}

/// Runs this process again, in place (same pid), with the thread and allocator settings a
/// trainer is fastest with ([`keel_trainer::device::recommended_thread_env`]), unless candle's
/// thread count is set already: so `keel train`'s defaults are its fastest settings, with no
/// environment variable to know about. Should that fail, training goes on as it is.
fn with_trainer_env() {
    #[cfg(unix)]
    if !keel_trainer::device::thread_env_is_set() {
        use std::os::unix::process::CommandExt;
        let error = std::env::current_exe().map(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .envs(keel_trainer::device::recommended_thread_env())
                .exec()
        });
        tracing::warn!("training with candle's default threads: {error:?}");
    }
}

/// Runs this process again, in place (same pid), with the allocator settings of a server
/// ([`keel_trainer::SERVER_ALLOCATOR_ENV`]) unless they are set already. Should that fail,
/// the server carries on with the training settings, and only its memory is the worse for it.
fn with_server_allocator() {
    #[cfg(unix)]
    if std::env::var_os(keel_trainer::SERVER_ALLOCATOR_ENV[0].0).is_none() {
        use std::os::unix::process::CommandExt;
        let error = std::env::current_exe().map(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .envs(keel_trainer::SERVER_ALLOCATOR_ENV)
                .exec()
        });
        tracing::warn!("serving with the trainer's allocator settings: {error:?}");
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

/// The operator token: the one given (`--token` or `KEEL_TOKEN`), or a new one — then `true`,
/// and the caller prints it, since nobody else knows it.
fn token_or_new(given: Option<String>) -> anyhow::Result<(String, bool)> {
    match given.filter(|t| !t.trim().is_empty()) {
        Some(t) => Ok((t, false)),
        None => Ok((keel_server::auth::new_token()?, true)),
    }
}

/// `keel check`: exit 0 when every summary agrees with its steps (or was repaired).
async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let r = keel_server::storage::check::check(&args.db, args.repair).await?;
    println!(
        "{}: {} branches, {} steps, {} buckets; {} wrong, {} missing, {} extra",
        args.db, r.branches, r.steps, r.buckets, r.wrong, r.missing, r.extra
    );
    for example in &r.examples {
        println!("  {example}");
    }
    match (r.is_clean(), r.repaired) {
        (true, _) => println!("every summary agrees with its steps"),
        (false, true) => println!("repaired: those summaries were rebuilt from their steps"),
        (false, false) => {
            anyhow::bail!("summaries disagree with their steps: run keel check --repair")
        }
    }
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    eprintln!("copying {} to {}…", args.from, args.to);
    let r = keel_server::storage::migrate::migrate(&args.from, &args.to).await?;
    let rows: u64 = r.rows.values().sum();
    let copied: u64 = r.copied.values().sum();
    let steps = r.rows.get("steps").copied().unwrap_or(0);
    eprintln!(
        "migrated in {:.1} s: {} runs, {steps} steps, {rows} rows in all ({copied} copied now{}); \
         every count and every run's checksum agree",
        started.elapsed().as_secs_f64(),
        r.runs,
        if r.resumed {
            ", the rest by an earlier run"
        } else {
            ""
        },
    );
    Ok(())
}

async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    eprintln!("copying {} to {}…", args.db.display(), args.out.display());
    let b = keel_server::storage::backup::backup(&args.db, &args.out).await?;
    eprintln!(
        "backed up in {:.1} s: {} runs, {} steps, {:.1} MB in {} (integrity check: ok)",
        started.elapsed().as_secs_f64(),
        b.runs,
        b.steps,
        b.bytes as f64 / 1e6,
        args.out.display()
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (token, made) = token_or_new(args.token)?;
    if made {
        eprintln!("KEEL_TOKEN was not set; this server's token is: {token}");
    }
    let mut config = keel_server::Config::new(args.db, token);
    config.addr = args.addr;
    config.lost_after = std::time::Duration::from_secs(args.lost_after.max(1));
    config.session_ttl = std::time::Duration::from_secs(args.session_hours.max(1) * 3600);
    config.secure_cookie = args.secure_cookie;
    config.webhooks = args.webhooks;
    config.static_dir = args.static_dir;
    config.public_url = args.public_url;
    config.private = args.private;
    config.replica = args.replica;
    let engine = match args.launcher {
        LauncherKind::Local => {
            args.sbatch.unused("--launcher slurm")?;
            keel_server::launches::Engine::Local
        }
        LauncherKind::Slurm => {
            anyhow::ensure!(
                args.max_trainers > 0,
                "--launcher slurm launches grids: it cannot go with --max-trainers 0"
            );
            anyhow::ensure!(
                args.slurm_poll.is_finite() && (0.1..=600.0).contains(&args.slurm_poll),
                "--slurm-poll must be between 0.1 and 600 seconds"
            );
            keel_server::launches::sbatch::check_installed()?;
            if config.public_url.is_none() && args.addr.ip().is_loopback() {
                eprintln!(
                    "note: trainers launched through SLURM stream to {}, which only this \
                     machine reaches; on a cluster, listen on another address or set --public-url",
                    args.addr
                );
            }
            keel_server::launches::Engine::Slurm(keel_server::launches::SlurmConfig {
                options: args.sbatch.options()?,
                logs: std::path::absolute(&args.slurm_logs).context("the --slurm-logs folder")?,
                poll_every: std::time::Duration::from_secs_f64(args.slurm_poll),
            })
        }
    };
    config.launch = launch::config(args.grids, args.max_trainers, engine)?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    eprintln!(
        "keel is serving http://{} (database {})",
        listener.local_addr()?,
        config.db
    );
    keel_server::serve(config, listener, shutdown_on_signal()).await
}

#[cfg(test)]
mod url_tests {
    use super::public_url;

    #[test]
    fn a_public_url_is_an_http_base_url() {
        assert_eq!(public_url("http://head:8080/").unwrap(), "http://head:8080");
        assert_eq!(
            public_url("https://keel.lab/keel").unwrap(),
            "https://keel.lab/keel"
        );
        for bad in [
            "head:8080",
            "ftp://x",
            "http://",
            "http:///x",
            "http://a b",
            "http://x?y=1",
        ] {
            assert!(public_url(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! `docker-compose.yml` and `Dockerfile` at the repository root, read as a deployment
    //! would read them: each service's command goes through the real argument parser.

    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};

    use clap::{ArgMatches, CommandFactory, Parser};
    use keel_server::storage::Location;
    use yaml_rust2::{Yaml, YamlLoader};

    use super::Cli;

    const COMPOSE: &str = include_str!("../docker-compose.yml");
    const DOCKERFILE: &str = include_str!("../Dockerfile");

    fn compose() -> Yaml {
        let mut docs = YamlLoader::load_from_str(COMPOSE).expect("docker-compose.yml is YAML");
        assert_eq!(docs.len(), 1, "docker-compose.yml holds one document");
        docs.remove(0)
    }

    fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
        let s = &compose["services"][name];
        assert!(s.is_hash(), "docker-compose.yml has no service `{name}`");
        s
    }

    fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
        y.as_str()
            .unwrap_or_else(|| panic!("{what} is a string, found {y:?}"))
    }

    /// `command` in list form, as the arguments after the image's `keel` entrypoint.
    fn command(service: &Yaml, name: &str) -> Vec<String> {
        let list = service["command"]
            .as_vec()
            .unwrap_or_else(|| panic!("`{name}`'s command is a list"));
        list.iter()
            .map(|a| match a {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("`{name}`'s command holds {other:?}"),
            })
            .collect()
    }

    /// Parses `keel <args>` with the real CLI; the subcommand's name and its matches.
    fn parse(args: &[String]) -> (String, ArgMatches) {
        let argv = std::iter::once("keel".to_string()).chain(args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv.clone()) {
            panic!("`keel {}` is not a valid invocation:\n{e}", args.join(" "));
        }
        let matches = Cli::command().get_matches_from(argv);
        let (name, sub) = matches.subcommand().expect("a subcommand");
        (name.to_string(), sub.clone())
    }

    /// `environment` in either form (map or `KEY=value` list) as (key, value) pairs.
    fn environment(service: &Yaml) -> Vec<(String, String)> {
        match &service["environment"] {
            Yaml::Hash(h) => h
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Null => String::new(),
                        other => format!("{other:?}"),
                    };
                    (text(k, "an environment key").to_string(), v)
                })
                .collect(),
            Yaml::Array(a) => a
                .iter()
                .map(|e| {
                    let e = text(e, "an environment entry");
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            Yaml::BadValue => Vec::new(),
            other => panic!("environment is a map or a list, found {other:?}"),
        }
    }

    /// The mount targets of a service's named volumes (declared under top-level `volumes`).
    fn named_volume_targets(compose: &Yaml, service: &Yaml) -> Vec<(String, PathBuf)> {
        let mounts = service["volumes"].as_vec().cloned().unwrap_or_default();
        mounts
            .iter()
            .filter_map(|m| match m {
                Yaml::String(s) => {
                    let mut parts = s.split(':');
                    let source = parts.next()?.to_string();
                    let target = parts.next()?;
                    Some((source, PathBuf::from(target)))
                }
                Yaml::Hash(_) if m["type"].as_str() == Some("volume") => Some((
                    text(&m["source"], "a volume's source").to_string(),
                    PathBuf::from(text(&m["target"], "a volume's target")),
                )),
                _ => None,
            })
            .filter(|(source, _)| {
                compose["volumes"]
                    .as_hash()
                    .is_some_and(|v| v.contains_key(&Yaml::String(source.clone())))
            })
            .collect()
    }

    fn on_named_volume(compose: &Yaml, service: &Yaml, path: &Path) -> Option<String> {
        named_volume_targets(compose, service)
            .into_iter()
            .find(|(_, target)| path.starts_with(target))
            .map(|(source, _)| source)
    }

    /// The Dockerfile's stages by name: the image each starts from and its instructions,
    /// continuation lines joined.
    fn stages() -> Vec<(String, String, Vec<String>)> {
        let joined = DOCKERFILE.replace("\\\n", " ");
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for line in joined.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if words[0].eq_ignore_ascii_case("FROM") {
                let name = match words.as_slice() {
                    [_, .., as_, name] if as_.eq_ignore_ascii_case("AS") => name.to_string(),
                    _ => String::new(),
                };
                let image = words.iter().skip(1).find(|w| !w.starts_with("--"));
                out.push((name, image.unwrap_or(&"").to_string(), Vec::new()));
            } else if let Some(stage) = out.last_mut() {
                stage.2.push(line.to_string());
            }
        }
        out
    }

    fn stage(name: &str) -> (String, Vec<String>) {
        stages()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, image, body)| (image, body))
            .unwrap_or_else(|| panic!("the Dockerfile has no stage `{name}`"))
    }

    /// The `cargo build` line of the stage a runtime stage copies `keel` from.
    fn cargo_build_behind(runtime: &str) -> String {
        let (_, body) = stage(runtime);
        let from = body
            .iter()
            .find_map(|l| {
                let rest = l.strip_prefix("COPY --from=")?;
                rest.contains("keel")
                    .then(|| rest.split_whitespace().next())?
            })
            .unwrap_or_else(|| panic!("stage `{runtime}` copies keel from a build stage"));
        let (_, build) = stage(from);
        build
            .into_iter()
            .find(|l| l.contains("cargo build"))
            .unwrap_or_else(|| panic!("stage `{from}` runs cargo build"))
    }

    #[test]
    fn every_compose_service_built_here_runs_a_valid_keel_command() {
        let compose = compose();
        for (name, want) in [("server", "serve"), ("trainer", "train")] {
            let (sub, _) = parse(&command(service(&compose, name), name));
            assert_eq!(sub, want, "`{name}` runs `keel {want}`");
        }
        // Any other service built from this Dockerfile runs keel too.
        let services = compose["services"].as_hash().expect("services is a map");
        for (name, s) in services.iter().filter(|(_, s)| !s["build"].is_badvalue()) {
            parse(&command(s, text(name, "a service name")));
        }
        // The trainer's config is built into the binary: the image holds nothing else.
        let (_, m) = parse(&command(service(&compose, "trainer"), "trainer"));
        let config = m
            .get_one::<PathBuf>("config")
            .expect("the trainer names a config");
        let cfg = keel_trainer::load_config(config);
        assert!(cfg.is_ok(), "{config:?} is a built-in config: {cfg:?}");
    }

    #[test]
    fn the_trainer_reserves_one_nvidia_gpu_and_is_built_with_the_cuda_feature() {
        let compose = compose();
        let trainer = service(&compose, "trainer");
        let devices = trainer["deploy"]["resources"]["reservations"]["devices"]
            .as_vec()
            .expect("the trainer reserves devices");
        let gpu = devices
            .iter()
            .find(|d| d["driver"].as_str() == Some("nvidia"))
            .expect("an nvidia device reservation");
        assert_eq!(gpu["count"].as_i64(), Some(1));
        let caps = gpu["capabilities"]
            .as_vec()
            .expect("capabilities is a list");
        assert!(caps.contains(&Yaml::String("gpu".into())));

        let (_, m) = parse(&command(trainer, "trainer"));
        let device = m.get_one::<String>("device").expect("a device");
        assert!(device.starts_with("cuda:"), "trains on `{device}`");

        assert_eq!(trainer["build"]["target"].as_str(), Some("trainer"));
        let build = cargo_build_behind("trainer");
        assert!(build.contains("--features cuda"), "{build}");
        let (image, _) = stage("trainer");
        assert!(image.starts_with("nvidia/cuda:") && image.contains("-runtime-"));
        let (builder, _) = stage("builder");
        assert!(builder.starts_with("nvidia/cuda:") && builder.contains("-devel-"));
        // Every build arg the compose file passes is one the Dockerfile declares.
        for (key, _) in trainer["build"]["args"].as_hash().into_iter().flatten() {
            let key = text(key, "a build arg");
            assert!(
                DOCKERFILE
                    .lines()
                    .any(|l| l.trim().starts_with(&format!("ARG {key}"))),
                "the Dockerfile declares ARG {key}"
            );
        }

        // The server needs no GPU: a plain build on a slim image.
        let server = service(&compose, "server");
        assert_eq!(server["build"]["target"].as_str(), Some("server"));
        assert!(server["deploy"].is_badvalue());
        assert!(!cargo_build_behind("server").contains("--features"));
        assert_eq!(stage("server").0, "debian:bookworm-slim");
    }

    #[test]
    fn the_database_and_the_checkpoints_live_on_named_volumes() {
        let compose = compose();
        let server = service(&compose, "server");
        let (_, m) = parse(&command(server, "server"));
        let db = match m.get_one::<Location>("db").expect("a database") {
            Location::Sqlite(path) => path,
            other => panic!("the default server is on a SQLite file, not {other}"),
        };
        assert!(db.is_absolute(), "{db:?}");
        assert!(
            on_named_volume(&compose, server, db).is_some(),
            "the database {db:?} lies on a named volume"
        );

        let trainer = service(&compose, "trainer");
        let (_, m) = parse(&command(trainer, "trainer"));
        let dir = m
            .get_one::<PathBuf>("checkpoint_dir")
            .expect("the trainer names its checkpoint directory");
        let volume = on_named_volume(&compose, trainer, dir)
            .unwrap_or_else(|| panic!("the checkpoints {dir:?} lie on a named volume"));
        assert_ne!(on_named_volume(&compose, server, db), Some(volume));
    }

    #[test]
    fn the_postgres_profile_runs_scalable_servers_on_a_healthy_postgres_with_its_data_on_a_volume()
    {
        let compose = compose();
        let profile = |s: &Yaml| s["profiles"].as_vec().cloned().unwrap_or_default();
        let postgres = service(&compose, "postgres");
        let replica = service(&compose, "server-pg");
        for s in [postgres, replica] {
            assert_eq!(profile(s), vec![Yaml::String("postgres".into())]);
        }
        // The default setup stays SQLite: nothing else is in a profile.
        assert!(profile(service(&compose, "server")).is_empty());
        let check = postgres["healthcheck"]["test"]
            .as_vec()
            .expect("a health check");
        assert!(check.iter().any(|w| w.as_str() == Some("pg_isready")));
        let data = Path::new("/var/lib/postgresql/data");
        assert!(on_named_volume(&compose, postgres, data).is_some());
        assert_eq!(
            replica["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy")
        );
        let (sub, m) = parse(&command(replica, "server-pg"));
        assert_eq!(sub, "serve");
        match m.get_one::<Location>("db").expect("a database") {
            Location::Postgres(url) => {
                assert!(
                    url.contains("@postgres"),
                    "reaches the service by name: {url}"
                );
                // A user and no password: that comes from PGPASSWORD.
                assert!(url.starts_with("postgres://keel@"), "{url}");
            }
            other => panic!("server-pg runs on PostgreSQL, not {other}"),
        }
        let env = environment(replica);
        let password = env
            .iter()
            .find(|(k, _)| k == "PGPASSWORD")
            .expect("PGPASSWORD");
        assert!(
            password.1.starts_with("${KEEL_PG_PASSWORD"),
            "{}",
            password.1
        );
        // Scalable: no fixed name, and a range of host ports for the replicas.
        assert!(replica["container_name"].is_badvalue());
        let ports = replica["ports"].as_vec().expect("ports");
        let published = text(&ports[0], "a port");
        let host = published.rsplit_once(':').expect("HOST:CONTAINER").0;
        assert!(host.contains('-'), "a range of host ports: {published}");
    }

    #[test]
    fn the_server_listens_on_all_interfaces_only_through_an_explicit_addr() {
        // Without the flag keel serve stays on loopback.
        let serve = Cli::command();
        let serve = serve.find_subcommand("serve").expect("keel serve");
        let addr = serve
            .get_arguments()
            .find(|a| a.get_id() == "addr")
            .expect("--addr");
        assert_eq!(addr.get_default_values(), ["127.0.0.1:8080"]);

        let compose = compose();
        let server = service(&compose, "server");
        let args = command(server, "server");
        let flag = args.iter().position(|a| a == "--addr");
        let flag = flag.expect("the server's command passes --addr");
        assert_eq!(args.get(flag + 1).map(String::as_str), Some("0.0.0.0:8080"));
        let (_, m) = parse(&args);
        let addr = *m.get_one::<SocketAddr>("addr").expect("an address");
        assert!(addr.ip().is_unspecified());
        assert!(
            !environment(server).iter().any(|(k, _)| k == "KEEL_ADDR"),
            "KEEL_ADDR would hide the address from the command"
        );
        assert!(!DOCKERFILE.contains("KEEL_ADDR"));

        // The published port reaches that listener.
        let ports = server["ports"]
            .as_vec()
            .expect("the server publishes a port");
        let published = ports.iter().any(|p| match p {
            Yaml::String(s) => s.rsplit(':').next() == Some(&addr.port().to_string()),
            Yaml::Hash(_) => p["target"].as_i64() == Some(i64::from(addr.port())),
            _ => false,
        });
        assert!(published, "port {} is published", addr.port());
    }

    #[test]
    fn the_trainer_waits_for_a_healthy_server_and_reaches_it_by_name() {
        let compose = compose();
        let server = service(&compose, "server");
        let check = server["healthcheck"]["test"]
            .as_vec()
            .expect("the server has a healthcheck");
        assert!(
            check
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("/healthz")))
        );
        let trainer = service(&compose, "trainer");
        assert_eq!(
            trainer["depends_on"]["server"]["condition"].as_str(),
            Some("service_healthy")
        );
        let (_, m) = parse(&command(trainer, "trainer"));
        assert_eq!(
            m.get_one::<String>("server").map(String::as_str),
            Some("http://server:8080")
        );
    }

    #[test]
    fn the_token_comes_from_the_operators_environment_and_never_from_the_file() {
        let compose = compose();
        for name in ["server", "trainer"] {
            let s = service(&compose, name);
            assert!(!command(s, name).iter().any(|a| a.starts_with("--token")));
            let env = environment(s);
            let token = env.iter().find(|(k, _)| k == "KEEL_TOKEN");
            let (_, value) = token.unwrap_or_else(|| panic!("`{name}` gets KEEL_TOKEN"));
            assert!(
                value.starts_with("${KEEL_TOKEN") && value.ends_with('}'),
                "`{name}`'s KEEL_TOKEN is `{value}`, not ${{KEEL_TOKEN…}}"
            );
        }
        assert!(!DOCKERFILE.contains("KEEL_TOKEN"));
    }

    #[test]
    fn the_images_hold_the_binary_and_nothing_it_would_read_beside_it() {
        for name in ["server", "trainer"] {
            let (_, body) = stage(name);
            for line in &body {
                assert!(
                    !line.starts_with("COPY configs") && !line.starts_with("COPY static"),
                    "stage `{name}`: {line}"
                );
            }
            assert!(!body.iter().any(|l| l.contains("KEEL_STATIC_DIR")));
            assert!(
                !body.iter().any(|l| l.contains("fonts-")),
                "the font is built in"
            );
        }
    }
}
