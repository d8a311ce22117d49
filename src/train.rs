//! `keel train`: argument parsing for the trainer, and Ctrl-C or SIGTERM as a clean stop.
//! With `--grid` and `--variant` it trains one variant of an ablation grid exactly as
//! `keel ablate` would (same run name and checkpoint folder): how the server's launches run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::ablate;

/// `eprintln!` that cannot panic: a launched trainer's stderr is a pipe to a server that may
/// have died, and a line it cannot write must not end the training.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config: a built-in one's name (`keel configs` lists them), e.g.
    /// proxy-tiny, or a TOML file, e.g. ./mine.toml.
    #[arg(long, required_unless_present_any = ["resume", "grid"])]
    config: Option<PathBuf>,
    /// An ablation grid, built in (e.g. stability) or a TOML file: train its `--variant`.
    #[arg(long, requires = "variant", conflicts_with_all = ["config", "resume"])]
    grid: Option<PathBuf>,
    /// The variant of `--grid` to train; its run is `<group>/<variant>`.
    #[arg(long, requires = "grid")]
    variant: Option<String>,
    /// Base URL of a keel server; without it the run trains offline.
    #[arg(long, env = "KEEL_SERVER")]
    server: Option<String>,
    /// The server's operator token.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Train until this step.
    #[arg(long)]
    steps: Option<u64>,
    /// A checkpoint directory to continue from (same run, same step numbers).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// With --resume: go on even if a data or tokenizer file changed since the checkpoint
    /// (the run then trains on batches it was not trained on before).
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Where checkpoints go (default: checkpoints/<run name>).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// The run's name on the server (default: the config's).
    #[arg(long)]
    name: Option<String>,
    /// The run's group (with `--grid`: default `<grid stem>-<unix seconds>`).
    #[arg(long)]
    group: Option<String>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.server.is_some() && args.token.is_none() {
        anyhow::bail!("--server needs the server's token: set KEEL_TOKEN or pass --token");
    }
    let opts = options(args)?;
    let dir = opts.checkpoint_dir.clone();
    let summary = keel_trainer::train(opts, stop_on_ctrl_c()?)?;
    say!(
        "trained {} steps; last loss {}; {:.0} tokens/s{}",
        summary.steps,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.tokens_per_s,
        summary
            .last_checkpoint
            .map(|c| format!("; checkpoint {}", c.display()))
            .unwrap_or_default(),
    );
    let Some(link) = &summary.link else {
        return Ok(());
    };
    let folder = link
        .spill_file
        .parent()
        .map(Path::to_path_buf)
        .or(dir)
        .unwrap_or_default();
    if link.steps_spilled > 0 || link.control_left > 0 {
        say!(
            "the server did not take {} steps and {} status reports or outcomes before the end: \
             they are kept in {}; `keel sync {}` sends them (so does the next `keel train` there)",
            link.steps_spilled,
            link.control_left,
            folder.display(),
            folder.display()
        );
    }
    anyhow::ensure!(
        link.steps_refused == 0,
        "the server refused {} steps; they are kept with its reasons in {}",
        link.steps_refused,
        link.refused_file.display()
    );
    Ok(())
}

fn options(args: TrainArgs) -> anyhow::Result<keel_trainer::TrainOptions> {
    let base = match (&args.grid, &args.variant) {
        (Some(grid), Some(variant)) => {
            let group = args
                .group
                .clone()
                .unwrap_or_else(|| ablate::group_name(grid));
            let mut opts = ablate::variant_options(&group, variant, grid_variant(grid, variant)?);
            opts.checkpoint_dir = args.checkpoint_dir.or(opts.checkpoint_dir);
            opts.run_name = args.name.or(opts.run_name);
            opts
        }
        _ => keel_trainer::TrainOptions {
            config: args.config.unwrap_or_default(),
            resume: args.resume,
            allow_data_change: args.allow_data_change,
            checkpoint_dir: args.checkpoint_dir,
            run_name: args.name,
            group: args.group,
            ..Default::default()
        },
    };
    Ok(keel_trainer::TrainOptions {
        server: args.server,
        token: args.token,
        device: args.device,
        steps: args.steps,
        ..base
    })
}

/// The config of `variant` of the grid file `grid`.
fn grid_variant(grid: &Path, variant: &str) -> anyhow::Result<keel_trainer::TrainConfig> {
    let variants = keel_trainer::load_grid(grid)
        .with_context(|| format!("loading the grid {}", grid.display()))?;
    let names: Vec<String> = variants.iter().map(|(n, _)| n.clone()).collect();
    variants
        .into_iter()
        .find(|(n, _)| n == variant)
        .map(|(_, config)| config)
        .with_context(|| {
            format!(
                "{} has no variant `{variant}` (it has {})",
                grid.display(),
                names.join(", ")
            )
        })
}

/// A flag set by the first Ctrl-C or SIGTERM: the trainer checkpoints and stops at the next
/// step boundary.
pub fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    stop_on_signal("stopping at the next step boundary…")
}

/// A flag set by the first Ctrl-C or SIGTERM (which then no longer end the process), saying
/// `saying` when it is set.
pub fn stop_on_signal(saying: &'static str) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        });
        say!("{saying}");
        flag.store(true, Ordering::SeqCst);
    });
    Ok(stop)
}
