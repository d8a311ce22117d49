//! `keel train`: argument parsing for the trainer, and Ctrl-C as a clean stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config (TOML), e.g. configs/proxy-tiny.toml.
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Where checkpoints go (default: checkpoints/<run name>).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// The run's name on the server (default: the config's).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    group: Option<String>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = match (&args.config, &args.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => {
            anyhow::bail!("give a config (--config configs/proxy-tiny.toml) or --resume CHECKPOINT")
        }
    };
    if args.server.is_some() && args.token.is_none() {
        anyhow::bail!("--server needs the server's token: set KEEL_TOKEN or pass --token");
    }
    let opts = keel_trainer::TrainOptions {
        config,
        server: args.server,
        token: args.token,
        device: args.device,
        steps: args.steps,
        resume: args.resume,
        checkpoint_dir: args.checkpoint_dir,
        run_name: args.name,
        group: args.group,
        ..Default::default()
    };
    let summary = keel_trainer::train(opts, stop_on_ctrl_c()?)?;
    eprintln!(
        "trained {} steps; last loss {}; {:.0} tokens/s{}",
        summary.steps,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.tokens_per_s,
        summary
            .last_checkpoint
            .map(|c| format!("; checkpoint {}", c.display()))
            .unwrap_or_default(),
    );
    Ok(())
}

/// A flag set by the first Ctrl-C or SIGTERM: the trainer checkpoints and stops at the next
/// step boundary.
pub fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
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
        eprintln!("stopping at the next step boundary…");
        flag.store(true, Ordering::SeqCst);
    });
    Ok(stop)
}
