//! `keel ablate GRID --slurm`: each variant of a grid as one SLURM batch job running
//! `keel train --grid … --variant … --server …`, followed in the terminal until every job
//! has ended. The token reaches the jobs through their environment (`sbatch --export`),
//! never through the job's script or a command line that `ps` or `squeue` shows. A variant
//! the scheduler refuses cancels the ones already submitted; Ctrl-C cancels them all with a
//! SIGTERM first (the trainer checkpoints and stops at its next step), then for good after
//! `--grace` seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The `sbatch` settings of `keel ablate --slurm`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SlurmArgs {
    /// Submit the variants as SLURM batch jobs instead of training them here.
    #[arg(long)]
    pub slurm: bool,
    /// `sbatch --partition`.
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// `sbatch --account`.
    #[arg(long, requires = "slurm")]
    pub account: Option<String>,
    /// `sbatch --time` (e.g. 2:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// `sbatch --gres` (e.g. gpu:1).
    #[arg(long, requires = "slurm")]
    pub gres: Option<String>,
    /// `sbatch --cpus-per-task`.
    #[arg(long, requires = "slurm")]
    pub cpus: Option<u32>,
    /// `sbatch --mem` (e.g. 16G).
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// Another `sbatch` argument, as one word (`--sbatch-arg=--qos=high`); repeatable.
    #[arg(
        long = "sbatch-arg",
        value_name = "ARG",
        requires = "slurm",
        allow_hyphen_values = true
    )]
    pub extra: Vec<String>,
    /// Where the jobs' output goes: `<dir>/<variant>-<job id>.out`.
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
}

pub struct Submission<'a> {
    pub grid: &'a Path,
    pub variants: Vec<String>,
    pub group: &'a str,
    pub server: &'a str,
    pub token: &'a str,
    pub steps: Option<u64>,
    pub device: &'a str,
}

/// Submits every variant, then follows the jobs until they have all ended.
pub fn run(args: &SlurmArgs, s: Submission<'_>) -> anyhow::Result<()> {
    which("sbatch")?;
    std::fs::create_dir_all(&args.logs)
        .with_context(|| format!("making the log folder {}", args.logs.display()))?;
    let keel = std::env::current_exe().context("finding the keel binary")?;
    let mut jobs: Vec<Job> = Vec::new();
    for variant in &s.variants {
        match submit(args, &s, &keel, variant) {
            Ok(id) => {
                eprintln!("{variant:<24} job {id} submitted");
                jobs.push(Job {
                    variant: variant.clone(),
                    id,
                    state: "SUBMITTED".into(),
                    detail: String::new(),
                });
            }
            Err(e) => {
                // Nothing is left half-submitted: the jobs already in go too.
                for j in &jobs {
                    let _ = Command::new("scancel").arg(&j.id).status();
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
    follow(args, &mut jobs)?;
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

fn which(program: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    anyhow::ensure!(
        found,
        "`{program}` is not on PATH: --slurm needs SLURM's client commands (sbatch, squeue, scontrol, scancel)"
    );
    Ok(())
}

/// `sbatch` for one variant; the job id, or the scheduler's message.
fn submit(
    args: &SlurmArgs,
    s: &Submission<'_>,
    keel: &Path,
    variant: &str,
) -> anyhow::Result<String> {
    let mut train = vec![
        quote(&keel.to_string_lossy()),
        "train".into(),
        "--grid".into(),
        quote(&s.grid.to_string_lossy()),
        "--variant".into(),
        quote(variant),
        "--group".into(),
        quote(s.group),
        "--server".into(),
        quote(s.server),
        "--device".into(),
        quote(s.device),
    ];
    if let Some(n) = s.steps {
        train.extend(["--steps".into(), n.to_string()]);
    }
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable")
        .arg(format!("--job-name=keel-{}-{variant}", s.group))
        .arg(format!("--output={}/{variant}-%j.out", args.logs.display()))
        // The submitting environment, with the token in it: not in the script, not in argv.
        .arg("--export=ALL")
        .env("KEEL_TOKEN", s.token);
    for (flag, value) in [
        ("--partition", &args.partition),
        ("--account", &args.account),
        ("--time", &args.time),
        ("--gres", &args.gres),
        ("--mem", &args.mem),
    ] {
        if let Some(v) = value {
            cmd.arg(format!("{flag}={v}"));
        }
    }
    if let Some(c) = args.cpus {
        cmd.arg(format!("--cpus-per-task={c}"));
    }
    cmd.args(&args.extra);
    cmd.arg(format!("--wrap=exec {}", train.join(" ")));
    let out = cmd.output().context("running sbatch")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `--parsable` prints `<id>` or `<id>;<cluster>`.
    let id = stdout.trim().split(';').next().unwrap_or("").to_owned();
    anyhow::ensure!(!id.is_empty(), "sbatch printed no job id");
    Ok(id)
}

/// A word for the job's `sh -c`, in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Polls the scheduler (once a second) and prints each change, until every job has ended.
fn follow(args: &SlurmArgs, jobs: &mut [Job]) -> anyhow::Result<()> {
    let stop = crate::train::stop_on_signal(
        "cancelling the jobs: SIGTERM first, so that each checkpoints…",
    )?;
    let mut cancelled_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) && cancelled_at.is_none() {
            for j in jobs.iter().filter(|j| !ended(&j.state)) {
                let _ = Command::new("scancel")
                    .args(["--full", "--signal=TERM", &j.id])
                    .status();
            }
            cancelled_at = Some(Instant::now());
        }
        if let Some(t) = cancelled_at
            && t.elapsed() > Duration::from_secs(args.grace)
        {
            for j in jobs.iter().filter(|j| !ended(&j.state)) {
                let _ = Command::new("scancel").arg(&j.id).status();
            }
        }
        let states = states(jobs.iter().map(|j| j.id.as_str()))?;
        for j in jobs.iter_mut() {
            if let Some((state, detail)) = states.get(&j.id)
                && (state != &j.state || detail != &j.detail)
            {
                j.state = state.clone();
                j.detail = detail.clone();
                eprintln!(
                    "{:<24} job {:<8} {:<10} {}",
                    j.variant, j.id, j.state, j.detail
                );
            }
        }
        if jobs.iter().all(|j| ended(&j.state)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn ended(state: &str) -> bool {
    !matches!(
        state,
        "SUBMITTED"
            | "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "RESIZING"
    )
}

/// Each job's state and what goes with it: the pending reason, the node it runs on, or the
/// exit code it ended with — from `scontrol show job`, which knows ended jobs for
/// `MinJobAge` after they end.
fn states<'a>(
    ids: impl Iterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for id in ids {
        let o = Command::new("scontrol")
            .args(["show", "job", "--oneliner", id])
            .output()
            .context("running scontrol")?;
        if !o.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("")
                .to_owned()
        };
        let state = field("JobState");
        let detail = match state.as_str() {
            "PENDING" => format!("({})", field("Reason")),
            "RUNNING" | "COMPLETING" => format!("on {}", field("NodeList")),
            _ => format!("exit {}", field("ExitCode")),
        };
        out.insert(id.to_owned(), (state, detail));
    }
    Ok(out)
}
