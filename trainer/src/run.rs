//! `keel train`: the whole life of a run — build or resume a [`Trainer`], register the run with
//! the server, loop over steps taking commands at step boundaries, checkpoint, and report.
//!
//! The loop is synchronous and never waits on the network: records go to the [`Link`]'s
//! queue, commands come from it with `try_recv`. While paused it blocks on the command channel
//! (and the stop flag) instead of spinning. Without a server URL there is no link at all.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_protocol::{
    CommandOutcome, CommandRecord, CommandStatus, PROTOCOL_VERSION, RunDetail, RunSpec, RunStatus,
    StatusReport, StepRecord,
};

use crate::checkpoint::AppliedCommand;
use crate::commands::Effect;
use crate::config::{self, TrainConfig};
use crate::device;
use crate::link::{Client, Link, Outbound, Outbox, SendReport, Sent};
use crate::trainer::{DataCheck, Trainer};

/// What `keel train` passes in. Everything but `config` and `device` is optional.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// The TOML config; ignored on `--resume` (the checkpoint carries its config).
    pub config: PathBuf,
    /// Base URL of a keel server, e.g. `http://127.0.0.1:8080`; `None` trains offline.
    pub server: Option<String>,
    pub token: Option<String>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Train until this step (total, not additional); overrides `run.steps`.
    pub steps: Option<u64>,
    /// A checkpoint directory to continue from.
    pub resume: Option<PathBuf>,
    /// Resume even when a data file changed since the checkpoint.
    pub allow_data_change: bool,
    pub checkpoint_dir: Option<PathBuf>,
    pub run_name: Option<String>,
    pub group: Option<String>,
    pub variant: Option<String>,
    /// Dotted-key overrides applied on top of the config file (`optim.lr` = 0.003).
    pub overrides: Vec<(String, toml::Value)>,
    /// A config already loaded (an ablation grid's variant); takes precedence over `config`.
    pub loaded: Option<TrainConfig>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub run_id: Option<i64>,
    /// Completed steps.
    pub steps: u64,
    pub last_loss: Option<f64>,
    /// Mean tokens/s over the steps of this process.
    pub tokens_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// Stopped early by Ctrl-C or a `stop` command.
    pub stopped: bool,
    pub link: Option<SendReport>,
}

/// Train as `opts` says until the step budget is spent, `stop` is set, or a `stop` command.
pub fn train(opts: TrainOptions, stop: Arc<AtomicBool>) -> Result<TrainSummary> {
    let dev = device::parse(if opts.device.is_empty() {
        "cpu"
    } else {
        &opts.device
    })?;
    let mut t = match &opts.resume {
        Some(path) => {
            let check = if opts.allow_data_change {
                DataCheck::AllowChange
            } else {
                DataCheck::Same
            };
            Trainer::resume_with(path, &dev, opts.checkpoint_dir.clone(), check)
                .with_context(|| format!("resuming from {}", path.display()))?
        }
        None => {
            let cfg = match &opts.loaded {
                Some(cfg) => cfg.clone(),
                None => config::load_with_overrides(&opts.config, &opts.overrides)?,
            };
            let dir = checkpoint_dir(&opts, &cfg);
            Trainer::new(cfg, &dev, dir)?
        }
    };
    if let Some(name) = &opts.run_name {
        t.cfg.run.name = name.clone();
    }
    let total = opts.steps.unwrap_or(t.cfg.run.steps);
    let mut link = connect(&opts, &mut t)?;
    tracing::info!(params = t.params.count(), run = ?t.state.run_id, "training {} to step {total}", t.cfg.run.name);
    let result = Loop::new(&mut t, link.as_mut(), &stop).run(total);
    let status = match &result {
        Ok(_) => StatusReport {
            status: RunStatus::Finished,
            step: Some(t.state.step),
            message: None,
        },
        Err(e) => StatusReport {
            status: RunStatus::Failed,
            step: Some(t.state.step),
            message: Some(format!("{e:#}")),
        },
    };
    let report = link.map(|mut l| {
        l.send(Outbound::Status(status));
        l.finish(Duration::from_secs(10))
    });
    let mut summary = result?;
    summary.run_id = t.state.run_id;
    summary.link = report;
    Ok(summary)
}

fn checkpoint_dir(opts: &TrainOptions, cfg: &TrainConfig) -> PathBuf {
    opts.checkpoint_dir
        .clone()
        .or_else(|| cfg.checkpoint.dir.clone().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("checkpoints").join(&cfg.run.name))
}

/// Register the run (or reuse the checkpoint's run id) and start the link.
fn connect(opts: &TrainOptions, t: &mut Trainer) -> Result<Option<Link>> {
    let Some(url) = &opts.server else {
        return Ok(None);
    };
    let id = match t.state.run_id {
        Some(id) => {
            check_resumed_run(url, opts.token.clone(), id, t)?;
            id
        }
        None => {
            let client = Client::new(url, opts.token.clone(), Duration::from_secs(30));
            let spec = RunSpec {
                name: t.cfg.run.name.clone(),
                group: opts.group.clone(),
                tags: t.cfg.run.tags.clone(),
                config: t.cfg.to_json(),
                layers: t.cfg.model.n_layers as u32,
                variant: opts.variant.clone(),
                protocol: Some(PROTOCOL_VERSION),
                ranks: None,
            };
            client.create_run(&spec, Duration::from_secs(10))?
        }
    };
    t.state.run_id = Some(id);
    // What earlier runs in this folder could not deliver goes first (this run's own outbox
    // is re-sent by its link).
    match crate::link::sync(
        &t.checkpoint_dir,
        url,
        opts.token.clone(),
        Duration::from_secs(10),
        Some(id),
    ) {
        Ok(synced) => {
            for (run, r) in synced {
                tracing::info!(
                    run,
                    sent = r.steps_sent,
                    refused = r.steps_refused,
                    left = r.steps_spilled,
                    "re-sent what an earlier run left in {}",
                    t.checkpoint_dir.display()
                );
            }
        }
        Err(e) if t.checkpoint_dir.exists() => {
            tracing::warn!(error = %e, "cannot look for earlier runs' spills")
        }
        Err(_) => {}
    }
    let outbox = Outbox::new(&t.checkpoint_dir, id);
    let mut link = Link::spawn(url, opts.token.clone(), outbox);
    // A resumed run may show as finished (or lost) on the server: say it is running again.
    link.send(Outbound::Status(StatusReport {
        status: RunStatus::Running,
        step: Some(t.state.step),
        message: None,
    }));
    Ok(Some(link))
}

/// A resumed checkpoint names its run: it must be this server's run of the same name and
/// layer count, or its steps would land in someone else's run (or nowhere).
fn check_resumed_run(url: &str, token: Option<String>, id: i64, t: &Trainer) -> Result<()> {
    let client = Client::new(url, token, Duration::from_secs(30));
    let give_up = Instant::now() + Duration::from_secs(10);
    let detail: RunDetail = loop {
        match client.get(&format!("/api/v1/runs/{id}")) {
            Sent::Ok(mut body) => break body.read_json()?,
            Sent::Refused(404, _) => bail!(
                "the checkpoint belongs to run {id}, which the server at {url} does not have \
                 (another server or database?); resume against the server it was trained with, \
                 or start a new run from its config"
            ),
            Sent::Refused(code, why) => {
                bail!("the server refused to show run {id} ({code}): {why}")
            }
            Sent::Retry(why, _) if Instant::now() >= give_up => {
                bail!("cannot reach the keel server at {url} to check run {id}: {why}")
            }
            Sent::Retry(_, after) => {
                std::thread::sleep(after.unwrap_or(Duration::from_millis(500)))
            }
        }
    };
    let layers = t.cfg.model.n_layers as u32;
    if detail.summary.name != t.cfg.run.name || detail.summary.layers != layers {
        bail!(
            "the checkpoint belongs to run {id}, but run {id} on {url} is `{}` with {} layers, \
             not `{}` with {layers}: another server or database?",
            detail.summary.name,
            detail.summary.layers,
            t.cfg.run.name
        );
    }
    Ok(())
}

/// The step loop with its command handling.
struct Loop<'a> {
    t: &'a mut Trainer,
    link: Option<&'a mut Link>,
    stop: &'a AtomicBool,
    paused: bool,
    last_checkpoint: Option<PathBuf>,
}

impl<'a> Loop<'a> {
    fn new(t: &'a mut Trainer, link: Option<&'a mut Link>, stop: &'a AtomicBool) -> Self {
        Self {
            t,
            link,
            stop,
            paused: false,
            last_checkpoint: None,
        }
    }

    fn run(mut self, total: u64) -> Result<TrainSummary> {
        let (started, first_step) = (Instant::now(), self.t.state.step);
        let mut last: Option<StepRecord> = None;
        let mut stopped = false;
        while self.t.state.step < total {
            if self.take_commands()? == Effect::Stop || self.stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            if self.paused {
                continue;
            }
            let rec = self.t.step()?;
            self.after_step(&rec)?;
            last = Some(rec);
        }
        self.last_checkpoint = Some(self.t.checkpoint()?);
        let done = self.t.state.step.saturating_sub(first_step);
        let tokens = done as f64 * (self.t.cfg.run.batch_size * self.t.state.seq_len) as f64;
        Ok(TrainSummary {
            run_id: self.t.state.run_id,
            steps: self.t.state.step,
            last_loss: last.map(|r| r.scalars["loss"].get()),
            tokens_per_s: tokens / started.elapsed().as_secs_f64().max(1e-9),
            last_checkpoint: self.last_checkpoint,
            stopped,
            link: None,
        })
    }

    fn after_step(&mut self, rec: &StepRecord) -> Result<()> {
        let every = self.t.cfg.run.log_every.max(1);
        if rec.step.is_multiple_of(every) {
            log_step(rec);
        }
        let ck = self.t.cfg.checkpoint.every;
        if ck > 0 && self.t.state.step.is_multiple_of(ck) {
            self.last_checkpoint = Some(self.t.checkpoint()?);
        }
        if let Some(link) = self.link.as_deref_mut() {
            link.step(self.t.state.branch, rec.clone());
        }
        Ok(())
    }

    /// Apply every command that has arrived; while paused, wait for more. Returns `Stop`
    /// when the run must end.
    fn take_commands(&mut self) -> Result<Effect> {
        loop {
            let next = match self.link.as_deref() {
                None => None,
                Some(l) if self.paused => l.wait_command(Duration::from_millis(200)),
                Some(l) => l.try_command(),
            };
            let Some(rec) = next else {
                return Ok(Effect::Continue);
            };
            if self.handle(rec)? == Effect::Stop {
                return Ok(Effect::Stop);
            }
            if self.paused && self.stop.load(Ordering::Relaxed) {
                return Ok(Effect::Stop);
            }
        }
    }

    /// Apply one command once, remember its outcome, and report it.
    fn handle(&mut self, rec: CommandRecord) -> Result<Effect> {
        let step = self.t.state.step;
        if let Some(done) = self.t.state.applied.get(&rec.id).cloned() {
            // Delivered again (a reconnect, or a resume): answer, don't re-apply.
            self.report(rec.id, done);
            return Ok(Effect::Continue);
        }
        let (effect, done) = match self.t.apply(&rec.command) {
            Ok((effect, message)) => (
                effect,
                AppliedCommand {
                    status: CommandStatus::Applied,
                    step,
                    message,
                },
            ),
            Err(why) => (
                Effect::Continue,
                AppliedCommand {
                    status: CommandStatus::Rejected,
                    step,
                    message: Some(why),
                },
            ),
        };
        tracing::info!(id = rec.id, kind = rec.command.kind(), status = ?done.status, message = ?done.message, "command at step {step}");
        self.t.state.applied.insert(rec.id, done.clone());
        self.report(rec.id, done);
        match effect {
            Effect::Pause if !self.paused => self.set_paused(true),
            Effect::Resume if self.paused => self.set_paused(false),
            _ => {}
        }
        Ok(effect)
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        let status = if paused {
            RunStatus::Paused
        } else {
            RunStatus::Running
        };
        let step = Some(self.t.state.step);
        if let Some(link) = self.link.as_deref_mut() {
            link.send(Outbound::Status(StatusReport {
                status,
                step,
                message: None,
            }));
        }
    }

    fn report(&mut self, command: i64, done: AppliedCommand) {
        if let Some(link) = self.link.as_deref_mut() {
            let outcome = CommandOutcome {
                status: done.status,
                step: Some(done.step),
                message: done.message,
            };
            link.send(Outbound::Outcome { command, outcome });
        }
    }
}

/// One line to stderr per `log_every` steps. Written without `eprintln!`, which panics when
/// stderr is gone: a launched trainer's stderr is a pipe to the server, and a trainer must
/// outlive a server that dies.
fn log_step(rec: &StepRecord) {
    use std::io::Write as _;
    let get = |k: &str| rec.scalars.get(k).map_or(f64::NAN, |m| m.get());
    let _ = writeln!(
        std::io::stderr(),
        "step {:>6}  loss {:.4}  lr {:.2e}  grad {:.3}  {:.0} tok/s",
        rec.step,
        get("loss"),
        get("lr"),
        get("grad_norm"),
        get("tokens_per_s")
    );
}
