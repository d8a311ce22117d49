//! `keel ablate GRID --slurm`: each variant of a grid as one SLURM batch job running
//! `keel train --grid … --variant … --server …`, followed in the terminal until every job
//! has ended (SLURM's commands are in [`keel_server::launches::sbatch`], shared with the
//! server's launcher). The token reaches the jobs through their environment (`sbatch
//! --export`), never through the job's script or a command line that `ps` or `squeue` shows.
//! A variant the scheduler refuses cancels the ones already submitted; Ctrl-C cancels them all
//! with a SIGTERM first (the trainer checkpoints and stops at its next step), then for good
//! after `--grace` seconds.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_server::launches::sbatch::{self, SbatchOptions, Stop};

/// `sbatch` options from the command line, for `keel ablate --slurm` and `keel serve
/// --launcher slurm`; a grid's `[launch.slurm]` table wins over them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SbatchArgs {
    /// SLURM jobs: `sbatch --partition`.
    #[arg(long)]
    pub partition: Option<String>,
    /// SLURM jobs: `sbatch --account`.
    #[arg(long)]
    pub account: Option<String>,
    /// SLURM jobs: `sbatch --time`, the time limit (e.g. 2:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// SLURM jobs: `sbatch --gres` (e.g. gpu:1).
    #[arg(long)]
    pub gres: Option<String>,
    /// SLURM jobs: `sbatch --cpus-per-task`.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// SLURM jobs: `sbatch --mem` (e.g. 16G).
    #[arg(long)]
    pub mem: Option<String>,
    /// SLURM jobs: another `sbatch` argument, as one word (`--sbatch-arg=--qos=high`);
    /// repeatable.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

impl SbatchArgs {
    pub fn options(&self) -> anyhow::Result<SbatchOptions> {
        let options = SbatchOptions {
            partition: self.partition.clone(),
            account: self.account.clone(),
            time: self.time.clone(),
            gres: self.gres.clone(),
            cpus: self.cpus,
            mem: self.mem.clone(),
            args: self.extra.clone(),
        };
        options.check()?;
        Ok(options)
    }

    /// Refuses these options where no job is submitted (`what` says what would submit).
    pub fn unused(&self, what: &str) -> anyhow::Result<()> {
        let set = self.options().map(|o| o != SbatchOptions::default());
        anyhow::ensure!(
            !set.unwrap_or(true),
            "--partition, --account, --time, --gres, --cpus, --mem and --sbatch-arg are for \
             SLURM jobs: they need {what}"
        );
        Ok(())
    }
}

/// The SLURM settings of `keel ablate --slurm`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SlurmArgs {
    /// Submit the variants as SLURM batch jobs instead of training them here.
    #[arg(long)]
    pub slurm: bool,
    #[command(flatten)]
    pub sbatch: SbatchArgs,
    /// Where the jobs' output goes: `<dir>/<group>-<variant>-<job id>.out`.
    #[arg(long, default_value = "slurm-logs", requires = "slurm")]
    pub logs: PathBuf,
    /// Seconds between a cancel's SIGTERM and its hard kill.
    #[arg(long, default_value_t = 60, requires = "slurm")]
    pub grace: u64,
}

/// One submitted variant and what the scheduler last said of it.
struct Job {
    variant: String,
    id: String,
    state: String,
    detail: String,
    /// The run's newest step and loss, from the server (on the live table only).
    step: Option<u64>,
    loss: Option<String>,
}

pub struct Submission<'a> {
    pub grid: &'a Path,
    pub variants: Vec<String>,
    pub group: &'a str,
    pub server: &'a str,
    pub token: &'a str,
    pub steps: Option<u64>,
    pub device: &'a str,
    /// The grid's own `[launch.slurm]` options, which win over the command line's.
    pub options: SbatchOptions,
}

/// Submits every variant, then follows the jobs until they have all ended.
pub fn run(args: &SlurmArgs, s: Submission<'_>) -> anyhow::Result<()> {
    sbatch::check_installed()?;
    let options = args.sbatch.options()?.with(&s.options);
    options.check()?;
    std::fs::create_dir_all(&args.logs)
        .with_context(|| format!("making the log folder {}", args.logs.display()))?;
    let logs = std::path::absolute(&args.logs).context("the log folder")?;
    let keel = std::env::current_exe().context("finding the keel binary")?;
    let mut jobs: Vec<Job> = Vec::new();
    for variant in &s.variants {
        let mut argv: Vec<OsString> = vec![
            keel.clone().into(),
            "train".into(),
            "--grid".into(),
            s.grid.into(),
            "--variant".into(),
            variant.into(),
            "--group".into(),
            s.group.into(),
            "--server".into(),
            s.server.into(),
            "--device".into(),
            s.device.into(),
        ];
        if let Some(n) = s.steps {
            argv.extend(["--steps".into(), n.to_string().into()]);
        }
        let submission = sbatch::Submission {
            name: &format!("keel-{}-{variant}", s.group),
            argv: &argv,
            env: &[],
            token: s.token,
            output: &sbatch::output_pattern(&logs, s.group, variant),
        };
        match sbatch::submit(&options, &submission) {
            Ok(id) => {
                eprintln!("{variant:<24} job {id} submitted");
                jobs.push(Job {
                    variant: variant.clone(),
                    id,
                    state: "SUBMITTED".into(),
                    detail: String::new(),
                    step: None,
                    loss: None,
                });
            }
            Err(e) => {
                // Nothing is left half-submitted: the jobs already in go too.
                for j in &jobs {
                    let _ = sbatch::cancel(&j.id, Stop::Kill);
                }
                let cancelled: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
                anyhow::bail!(
                    "the scheduler refused variant {variant}: {e:#}{}",
                    if cancelled.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; cancelled the jobs already submitted: {}",
                            cancelled.join(", ")
                        )
                    }
                );
            }
        }
    }
    follow(args, &s, &mut jobs)?;
    let failed: Vec<&Job> = jobs.iter().filter(|j| j.state != "COMPLETED").collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} jobs did not complete: {}",
        failed.len(),
        jobs.len(),
        failed
            .iter()
            .map(|j| format!("{} ({} {})", j.variant, j.state, j.detail))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Polls the scheduler (once a second) until every job has ended. On a terminal it keeps a
/// live table of the jobs (state, where, and each run's step and loss from the server);
/// otherwise it prints a line per change of state.
fn follow(args: &SlurmArgs, s: &Submission<'_>, jobs: &mut [Job]) -> anyhow::Result<()> {
    let stop = crate::train::stop_on_signal(
        "cancelling the jobs: SIGTERM first, so that each checkpoints…",
    )?;
    let live = std::io::stderr().is_terminal();
    let mut drawn = 0;
    let mut cancelled_at: Option<Instant> = None;
    loop {
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let mut states = sbatch::states(&ids)?;
        if stop.load(Ordering::SeqCst) {
            let first = cancelled_at.is_none();
            let late = cancelled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(args.grace));
            for j in jobs.iter().filter(|j| !sbatch::ended(&j.state)) {
                let pending = states.get(&j.id).is_none_or(|s| s.pending());
                if pending || late {
                    let _ = sbatch::cancel(&j.id, Stop::Kill);
                } else if first {
                    let _ = sbatch::cancel(&j.id, Stop::Term);
                }
            }
            cancelled_at.get_or_insert_with(Instant::now);
        }
        for j in jobs.iter_mut() {
            let Some(state) = states.remove(&j.id) else {
                continue;
            };
            let detail = match state.state.as_str() {
                "PENDING" if !state.reason.is_empty() => format!("({})", state.reason),
                "PENDING" => String::new(),
                "RUNNING" | "COMPLETING" => format!("on {}", state.node),
                _ => state.exit.clone().unwrap_or_default(),
            };
            if state.state != j.state || detail != j.detail {
                j.state = state.state;
                j.detail = detail;
                if !live {
                    eprintln!(
                        "{:<24} job {:<8} {:<10} {}",
                        j.variant, j.id, j.state, j.detail
                    );
                }
            }
        }
        if live {
            for run in progress(s) {
                if let Some(j) = jobs.iter_mut().find(|j| j.variant == run.variant) {
                    j.step = run.step;
                    j.loss = run.loss;
                }
            }
            drawn = draw(jobs, drawn);
        }
        if jobs.iter().all(|j| sbatch::ended(&j.state)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A variant's run as the server has it.
struct RunProgress {
    variant: String,
    step: Option<u64>,
    loss: Option<String>,
}

/// Each variant's run, as the server has it: its newest step and loss. Empty when the server
/// does not answer (the table then shows the scheduler's side only).
fn progress(s: &Submission<'_>) -> Vec<RunProgress> {
    let url = format!("{}/api/v1/runs?limit=1000", s.server.trim_end_matches('/'));
    let answer = ureq::get(&url)
        .header("Authorization", &format!("Bearer {}", s.token))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok());
    let Some(serde_json::Value::Array(runs)) = answer else {
        return Vec::new();
    };
    runs.iter()
        .filter(|r| r["group"] == s.group)
        .filter_map(|r| {
            let variant = r["variant"].as_str()?.to_owned();
            let loss = match &r["last_loss"] {
                serde_json::Value::Number(n) => n.as_f64().map(|l| format!("{l:.4}")),
                serde_json::Value::String(text) => Some(text.clone()),
                _ => None,
            };
            Some(RunProgress {
                variant,
                step: r["last_step"].as_u64(),
                loss,
            })
        })
        .collect()
}

/// Draws the table over the `drawn` lines drawn last time; how many lines it drew.
fn draw(jobs: &[Job], drawn: usize) -> usize {
    let mut out = String::new();
    if drawn > 0 {
        // To the start of the first line drawn, then clear to the end of the screen.
        out.push_str(&format!("\x1b[{drawn}F\x1b[J"));
    }
    out.push_str(&format!(
        "{:<24} {:<8} {:<11} {:<28} {:>9} {:>9}\n",
        "VARIANT", "JOB", "STATE", "", "STEP", "LOSS"
    ));
    for j in jobs {
        let step = j.step.map_or("—".into(), |s| s.to_string());
        let loss = j.loss.clone().unwrap_or_else(|| "—".into());
        out.push_str(&format!(
            "{:<24} {:<8} {:<11} {:<28} {:>9} {:>9}\n",
            j.variant, j.id, j.state, j.detail, step, loss
        ));
    }
    eprint!("{out}");
    jobs.len() + 1
}
