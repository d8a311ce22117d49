//! `keel ablate`: one grid file (a base config plus named variants) becomes one run per
//! variant, all in one group, trained `--parallel` at a time against a server — or, with
//! `--slurm`, submitted as one SLURM job each ([`crate::slurm`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

#[derive(clap::Args)]
pub struct AblateArgs {
    /// The grid: a built-in one's name (`keel configs` lists them), e.g. stability, or a TOML
    /// file.
    grid: PathBuf,
    /// Base URL of the keel server the runs stream to.
    #[arg(long, env = "KEEL_SERVER")]
    server: String,
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: String,
    /// Train each variant until this step (the grid's own count when unset).
    #[arg(long)]
    steps: Option<u64>,
    /// Variants trained at the same time.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// `cpu` or `cuda:N` (default: the grid's `[launch] device`, else cpu).
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    slurm: crate::slurm::SlurmArgs,
}

/// What one variant's run came to.
struct Outcome {
    variant: String,
    result: anyhow::Result<keel_trainer::TrainSummary>,
}

pub fn run(args: AblateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    let variants = keel_trainer::load_grid(&args.grid)
        .with_context(|| format!("loading the grid {}", args.grid.display()))?;
    let group = group_name(&args.grid);
    let launch = crate::launch::GridLaunch::of(&args.grid)
        .with_context(|| format!("loading the grid {}", args.grid.display()))?;
    let device = args
        .device
        .clone()
        .or(launch.device)
        .unwrap_or_else(|| "cpu".into());
    if !args.slurm.slurm {
        args.slurm.sbatch.unused("--slurm")?;
    }
    if args.slurm.slurm {
        eprintln!(
            "{} variants of {} in group {group}, one SLURM job each",
            variants.len(),
            args.grid.display()
        );
        return crate::slurm::run(
            &args.slurm,
            crate::slurm::Submission {
                grid: &args.grid,
                variants: variants.into_iter().map(|(v, _)| v).collect(),
                group: &group,
                server: &args.server,
                token: &args.token,
                steps: args.steps,
                device: &device,
                options: launch.slurm,
            },
        );
    }
    eprintln!(
        "{} variants of {} in group {group}, {} at a time",
        variants.len(),
        args.grid.display(),
        args.parallel
    );
    let queue = Arc::new(Mutex::new(VecDeque::from(variants)));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let stop = crate::train::stop_on_ctrl_c()?;
    let workers: Vec<_> = (0..args.parallel)
        .map(|_| {
            let (queue, outcomes, stop) = (queue.clone(), outcomes.clone(), stop.clone());
            let (server, token, device, group) = (
                args.server.clone(),
                args.token.clone(),
                device.clone(),
                group.clone(),
            );
            let steps = args.steps;
            std::thread::spawn(move || {
                while let Some((variant, config)) = queue.lock().expect("queue").pop_front() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let opts = keel_trainer::TrainOptions {
                        server: Some(server.clone()),
                        token: Some(token.clone()),
                        device: device.clone(),
                        steps,
                        ..variant_options(&group, &variant, config)
                    };
                    let result = keel_trainer::train(opts, stop.clone());
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push(Outcome { variant, result });
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a training thread panicked"))?;
    }
    report(&outcomes.lock().expect("outcomes"))
}

/// The group of one launch of `grid`: `<file stem>-<unix seconds>`, so that a second launch
/// of the same grid is told apart. (The server names the groups of its launches the same way.)
pub fn group_name(grid: &Path) -> String {
    let stem = grid.file_stem().and_then(|s| s.to_str()).unwrap_or("grid");
    format!("{stem}-{}", keel_server::storage::now() as u64)
}

/// One variant's run: named `<group>/<variant>`, its checkpoints in
/// `checkpoints/<group>/<variant>`, whether `keel ablate` or the server launches it.
pub fn variant_options(
    group: &str,
    variant: &str,
    config: keel_trainer::TrainConfig,
) -> keel_trainer::TrainOptions {
    keel_trainer::TrainOptions {
        checkpoint_dir: Some(PathBuf::from("checkpoints").join(group).join(variant)),
        run_name: Some(format!("{group}/{variant}")),
        group: Some(group.to_owned()),
        variant: Some(variant.to_owned()),
        loaded: Some(config),
        ..Default::default()
    }
}

fn report(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut failed = 0;
    for o in outcomes {
        match &o.result {
            Ok(s) => eprintln!(
                "{:<24} run {:>4}  {:>6} steps  last loss {}",
                o.variant,
                s.run_id.map_or("-".into(), |id| id.to_string()),
                s.steps,
                s.last_loss.map_or("-".into(), |l| format!("{l:.4}"))
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{:<24} failed: {e:#}", o.variant);
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} variants failed",
        outcomes.len()
    );
    Ok(())
}
