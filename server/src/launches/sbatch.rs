//! SLURM's client commands, as keel uses them: `sbatch` to submit one variant as a batch job,
//! `squeue` to read the states of the jobs it submitted (one call for all of them), `sacct` for
//! a job the controller has already forgotten, and `scancel` to stop one. Shared by the
//! server's SLURM launcher and by `keel ablate --slurm`.
//!
//! A job runs the trainer's command line under `exec` (through `sbatch --wrap`), so the job's
//! process is the trainer itself and a signal sent to the batch job reaches it. The token goes
//! into the environment of `sbatch` and from there, with `--export=ALL`, into the job's: it is
//! never in the job's script nor on a command line that `ps` or `squeue` shows.
//!
//! Every function here blocks on a child process: call them from blocking threads.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::Deserialize;

/// The `sbatch` options of a job: from server flags, from `keel ablate`'s, and from a grid's
/// `[launch.slurm]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SbatchOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// A time limit as SLURM writes it: `30`, `2:00:00`, `1-12:00:00`.
    pub time: Option<String>,
    /// Generic resources, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// Memory per node, e.g. `16G`.
    pub mem: Option<String>,
    /// Further `sbatch` arguments, each one word: `--qos=high`.
    pub args: Vec<String>,
}

impl SbatchOptions {
    /// These options with `over`'s on top: each value `over` sets wins, and its extra
    /// arguments come after these (so that, for `sbatch`, they win too).
    pub fn with(&self, over: &SbatchOptions) -> SbatchOptions {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        SbatchOptions {
            partition: pick(&self.partition, &over.partition),
            account: pick(&self.account, &over.account),
            time: pick(&self.time, &over.time),
            gres: pick(&self.gres, &over.gres),
            cpus: over.cpus.or(self.cpus),
            mem: pick(&self.mem, &over.mem),
            args: self.args.iter().chain(&over.args).cloned().collect(),
        }
    }

    /// Refuses what `sbatch` would read as something else: an extra argument that is not an
    /// option, a value that holds a line break, a CPU count of 0.
    pub fn check(&self) -> anyhow::Result<()> {
        for a in &self.args {
            anyhow::ensure!(
                a.starts_with('-'),
                "the sbatch argument `{a}` is not an option (write it as one word, `--qos=high`)"
            );
        }
        let values = [
            &self.partition,
            &self.account,
            &self.time,
            &self.gres,
            &self.mem,
        ];
        let words = values.into_iter().flatten().chain(&self.args);
        for v in words {
            anyhow::ensure!(
                !v.is_empty() && !v.contains(['\n', '\r', '\0']),
                "the sbatch option `{v}` is empty or holds a line break"
            );
        }
        anyhow::ensure!(self.cpus != Some(0), "`cpus` must be at least 1");
        Ok(())
    }

    /// The options in a few words, for the runs page: `partition gpu, gres gpu:1`.
    pub fn describe(&self) -> String {
        let mut words: Vec<String> = [
            ("partition", &self.partition),
            ("account", &self.account),
            ("time", &self.time),
            ("gres", &self.gres),
            ("mem", &self.mem),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some(format!("{name} {}", v.as_ref()?)))
        .collect();
        if let Some(c) = self.cpus {
            words.push(format!("{c} CPUs"));
        }
        words.extend(self.args.iter().cloned());
        match words.is_empty() {
            true => "the cluster's default options".into(),
            false => words.join(", "),
        }
    }

    fn apply(&self, cmd: &mut Command) {
        for (flag, value) in [
            ("--partition", &self.partition),
            ("--account", &self.account),
            ("--time", &self.time),
            ("--gres", &self.gres),
            ("--mem", &self.mem),
        ] {
            if let Some(v) = value {
                cmd.arg(format!("{flag}={v}"));
            }
        }
        if let Some(c) = self.cpus {
            cmd.arg(format!("--cpus-per-task={c}"));
        }
        cmd.args(&self.args);
    }
}

/// One job to submit.
pub struct Submission<'a> {
    /// The job's name, as `squeue` shows it.
    pub name: &'a str,
    /// The trainer's command line, program first.
    pub argv: &'a [OsString],
    /// Environment the trainer needs beyond the submitter's own (which the job inherits).
    pub env: &'a [(OsString, OsString)],
    /// The operator token, for the trainer's environment.
    pub token: &'a str,
    /// The job's output file (stdout and stderr); `%j` is the job id.
    pub output: &'a Path,
}

/// Whether SLURM's client commands are on `PATH`; an error that says what is missing.
pub fn check_installed() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in ["sbatch", "squeue", "scancel"] {
        let found = std::env::split_paths(&path).any(|d| d.join(program).is_file());
        anyhow::ensure!(
            found,
            "`{program}` is not on PATH: launching through SLURM needs its client commands \
             (sbatch, squeue, scancel) on this machine"
        );
    }
    Ok(())
}

/// Submits one job; its id, or the scheduler's own message.
pub fn submit(options: &SbatchOptions, job: &Submission<'_>) -> anyhow::Result<String> {
    let words: Vec<String> = job
        .argv
        .iter()
        .map(|a| quote(&a.to_string_lossy()))
        .collect();
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable")
        .arg(format!("--job-name={}", job.name))
        .arg(format!("--output={}", job.output.display()))
        .arg("--export=ALL")
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .env("KEEL_TOKEN", job.token);
    options.apply(&mut cmd);
    cmd.arg(format!("--wrap=exec {}", words.join(" ")));
    let out = cmd.output().context("running sbatch")?;
    let said = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "{}", said.trim());
    // `--parsable` prints `<id>` or `<id>;<cluster>`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or("").to_owned();
    anyhow::ensure!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_'),
        "sbatch printed no job id (it said `{}`)",
        stdout.trim()
    );
    Ok(id)
}

/// A word for the job's `sh -c`, in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where a job is, as the scheduler says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    /// SLURM's state: `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, …
    pub state: String,
    /// Why it is pending, or why it ended (`Resources`, `Priority`, `NonZeroExitCode`); empty
    /// when the scheduler gives none.
    pub reason: String,
    /// The node it runs or ran on; empty before it starts.
    pub node: String,
    /// How it exited, once it has: `exit code 1`, `killed by signal 9`.
    pub exit: Option<String>,
}

impl JobState {
    /// Whether the job is over (its state can no longer change).
    pub fn ended(&self) -> bool {
        ended(&self.state)
    }

    /// Whether it has not started yet.
    pub fn pending(&self) -> bool {
        matches!(self.state.as_str(), "PENDING" | "REQUEUED" | "REQUEUE_HOLD")
    }
}

/// Whether a job in SLURM state `state` is over.
pub fn ended(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "RESV_DEL_HOLD"
    )
}

/// The states of jobs `ids`, from one `squeue` call. A job the controller has forgotten (it
/// ended more than `MinJobAge` ago) is missing from the answer: see [`forgotten`].
pub fn states(ids: &[String]) -> anyhow::Result<HashMap<String, JobState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all"])
        .arg(format!("--jobs={}", ids.join(",")))
        .arg("--Format=JobID:|,State:|,Reason:|,NodeList:|,exit_code:|")
        .output()
        .context("running squeue")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let said = String::from_utf8_lossy(&out.stderr);
    // squeue fails when none of the jobs is known any more; that is an empty answer.
    if !out.status.success() && !said.contains("Invalid job id") {
        anyhow::bail!("squeue failed: {}", said.trim());
    }
    Ok(parse_squeue(&text))
}

fn parse_squeue(text: &str) -> HashMap<String, JobState> {
    let mut jobs = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [id, state, reason, node, code, ..] = fields[..] else {
            continue;
        };
        // `CANCELLED by 1000` names who cancelled it.
        let state = state.split_whitespace().next().unwrap_or("").to_owned();
        let exit = ended(&state).then(|| describe_status(code)).flatten();
        let reason = if reason == "None" { "" } else { reason };
        jobs.insert(
            id.to_owned(),
            JobState {
                state,
                reason: reason.to_owned(),
                node: node.to_owned(),
                exit,
            },
        );
    }
    jobs
}

/// `squeue`'s exit code is the raw wait status: the code in its high byte, a signal in its low
/// bits.
fn describe_status(raw: &str) -> Option<String> {
    let raw: u32 = raw.parse().ok()?;
    let signal = raw & 0x7f;
    Some(match signal {
        0 => format!("exit code {}", raw >> 8),
        s => format!("killed by signal {s}"),
    })
}

/// What `sacct` (SLURM's accounting) says of a job `squeue` no longer knows; `None` when
/// accounting is off or does not know it either.
pub fn forgotten(id: &str) -> Option<JobState> {
    let out = Command::new("sacct")
        .args(["--noheader", "--parsable2", "--allocations"])
        .args(["--format=State,ExitCode,NodeList", "--jobs", id])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let mut fields = line.split('|');
    let state = fields.next()?.split_whitespace().next()?.to_owned();
    // `code:signal`.
    let (code, signal) = fields.next()?.split_once(':')?;
    let node = fields.next().unwrap_or("").to_owned();
    let exit = match signal {
        "0" => format!("exit code {code}"),
        s => format!("killed by signal {s}"),
    };
    Some(JobState {
        state,
        reason: String::new(),
        node,
        exit: Some(exit),
    })
}

/// How [`cancel`] stops a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM to the batch job's processes: the trainer checkpoints and exits at its next
    /// step boundary. A pending job cannot take a signal.
    Term,
    /// Cancelled for good (SLURM sends SIGTERM, then SIGKILL after its `KillWait`).
    Kill,
}

/// `scancel` for one job; the scheduler's message when it refuses.
pub fn cancel(id: &str, stop: Stop) -> anyhow::Result<()> {
    let mut cmd = Command::new("scancel");
    if stop == Stop::Term {
        cmd.args(["--full", "--signal=TERM"]);
    }
    let out = cmd.arg(id).output().context("running scancel")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The job's output file as `sbatch --output` is given it: `<dir>/<group>-<variant>-%j.out`.
pub fn output_pattern(dir: &Path, group: &str, variant: &str) -> PathBuf {
    dir.join(format!("{group}-{variant}-%j.out"))
}

/// The output file of job `id` made from [`output_pattern`].
pub fn output_of(pattern: &Path, id: &str) -> PathBuf {
    PathBuf::from(pattern.to_string_lossy().replace("%j", id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_states_with_exit_codes() {
        let text = "3|PENDING|Resources||0|\n1|FAILED|NonZeroExitCode|vm|768|\n\
                    2|RUNNING|None|vm|0|\n4|CANCELLED by 0|None|vm|15|\n5|COMPLETED|None|vm|0|\n";
        let jobs = parse_squeue(text);
        assert_eq!(jobs.len(), 5);
        assert!(jobs["3"].pending() && !jobs["3"].ended());
        assert_eq!(jobs["3"].reason, "Resources");
        assert_eq!(jobs["3"].exit, None);
        assert_eq!(jobs["1"].exit.as_deref(), Some("exit code 3"));
        assert_eq!(jobs["1"].node, "vm");
        assert_eq!(jobs["2"].reason, "");
        assert!(!jobs["2"].ended());
        assert_eq!(jobs["4"].state, "CANCELLED");
        assert_eq!(jobs["4"].exit.as_deref(), Some("killed by signal 15"));
        assert!(jobs["5"].ended());
    }

    #[test]
    fn a_grids_options_win_over_the_servers() {
        let server = SbatchOptions {
            partition: Some("cpu".into()),
            time: Some("1:00:00".into()),
            args: vec!["--qos=low".into()],
            ..SbatchOptions::default()
        };
        let grid = SbatchOptions {
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            args: vec!["--qos=high".into()],
            ..SbatchOptions::default()
        };
        let both = server.with(&grid);
        assert_eq!(both.partition.as_deref(), Some("gpu"));
        assert_eq!(both.time.as_deref(), Some("1:00:00"));
        assert_eq!(both.gres.as_deref(), Some("gpu:1"));
        assert_eq!(both.args, ["--qos=low", "--qos=high"]);
    }

    #[test]
    fn options_sbatch_would_misread_are_refused() {
        let bad = SbatchOptions {
            args: vec!["high".into()],
            ..SbatchOptions::default()
        };
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("not an option")
        );
        let bad = SbatchOptions {
            partition: Some("a\nb".into()),
            ..SbatchOptions::default()
        };
        assert!(bad.check().is_err());
        let bad = SbatchOptions {
            cpus: Some(0),
            ..SbatchOptions::default()
        };
        assert!(bad.check().is_err());
        assert!(SbatchOptions::default().check().is_ok());
    }

    #[test]
    fn a_word_with_quotes_survives_the_jobs_shell() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        let out = output_of(&output_pattern(Path::new("/l"), "g-1", "a"), "42");
        assert_eq!(out, Path::new("/l/g-1-a-42.out"));
    }
}
