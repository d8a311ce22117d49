//! Variants as SLURM jobs (`keel serve --launcher slurm`).
//!
//! A launch submits its variants one after another (`sbatch`, one job each) and keeps each
//! job's id in its record, which is stored: the record is the whole truth, so a restarted
//! server follows the same jobs. A job the scheduler refuses fails its variant with the
//! scheduler's message and cancels the launch's other jobs, so nothing is left half
//! submitted.
//!
//! One task polls the scheduler for every job not yet ended, all in one `squeue` call, every
//! [`SlurmConfig::poll_every`] (and at once after a submission or a cancel): a pending job is a
//! queued variant with SLURM's reason, a running one shows its node, and an ended one is
//! finished, failed (with its exit and the last lines of its output file) or cancelled. A
//! cancelled launch's running jobs get SIGTERM first — the trainer checkpoints and stops at
//! its next step — and are cancelled for good after the stop grace; pending ones are
//! cancelled at once.

use std::ffi::OsString;
use std::time::Instant;

use keel_protocol::{RunStatus, VariantState};

use super::child::{self, Ended};
use super::queue::failure;
use super::sbatch::{self, JobState, SbatchOptions, Stop};
use super::{Engine, Launches, SlurmConfig};
use crate::storage::now;

/// A variant with a job that has not ended, as the poller sees it.
struct Tracked {
    launch: i64,
    index: usize,
    job: String,
    cancelled: bool,
    /// When it was sent SIGTERM, if it was.
    term: Option<Instant>,
}

impl Launches {
    fn slurm(&self) -> &SlurmConfig {
        match &self.0.config.engine {
            Engine::Slurm(slurm) => slurm,
            Engine::Local => unreachable!("SLURM work on a server that launches locally"),
        }
    }

    /// Variants of a restored launch that were never submitted: submitted now, with the
    /// grid's options as they read today.
    pub(super) fn resubmit(&self, id: i64, indexes: Vec<usize>) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(record) = this.get(id) else { return };
            let launcher = this.0.config.launcher.clone();
            let grid = record.grid.clone();
            let own = tokio::task::spawn_blocking(move || launcher.sbatch_options(&grid)).await;
            match own {
                Ok(Ok(own)) => {
                    let options = this.slurm().options.with(&own);
                    this.submit(id, indexes, options).await;
                }
                Ok(Err(e)) => this.refused(id, indexes[0], &format!("{e:#}"), Vec::new()),
                Err(e) => tracing::warn!(launch = id, "reading a grid's sbatch options: {e}"),
            }
        });
    }

    /// Submits variants `indexes` of launch `id`, in order; the first refusal ends it.
    pub(super) async fn submit(self, id: i64, indexes: Vec<usize>, options: SbatchOptions) {
        let logs = self.slurm().logs.clone();
        let mut submitted = Vec::new();
        for index in indexes {
            let job = {
                let t = self.table();
                let Some(entry) = t.launches.get(&id) else {
                    return;
                };
                let v = &entry.record.variants[index];
                if t.closing || v.state != VariantState::Queued || v.job.is_some() {
                    continue;
                }
                self.job(&entry.record, index)
            };
            let cmd = self.0.config.launcher.command(&job);
            let argv: Vec<OsString> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_owned())
                .collect();
            let env: Vec<(OsString, OsString)> = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            let output = sbatch::output_pattern(&logs, &job.group, &job.variant);
            let name = format!("keel-{}-{}", job.group, job.variant);
            let token = self.0.token.clone();
            let (opts, out) = (options.clone(), output.clone());
            let result = tokio::task::spawn_blocking(move || {
                if let Some(dir) = out.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| anyhow::anyhow!("making {}: {e}", dir.display()))?;
                }
                let submission = sbatch::Submission {
                    name: &name,
                    argv: &argv,
                    env: &env,
                    token: &token,
                    output: &out,
                };
                sbatch::submit(&opts, &submission)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("submitting: {e}")));
            match result {
                Ok(jobid) => {
                    tracing::info!(launch = id, variant = job.variant, job = jobid, "submitted");
                    let log = sbatch::output_of(&output, &jobid);
                    let mut t = self.table();
                    let Some(entry) = t.launches.get_mut(&id) else {
                        return;
                    };
                    let v = &mut entry.record.variants[index];
                    v.job = Some(jobid.clone());
                    v.log = Some(log.to_string_lossy().into_owned());
                    // Cancelled while it was being submitted: the poller cancels the job.
                    if v.state == VariantState::Cancelled {
                        v.state = VariantState::Queued;
                        v.ended_at = None;
                    }
                    v.reason = Some("submitted".into());
                    self.publish(entry);
                    submitted.push(jobid);
                }
                Err(e) => {
                    tracing::warn!(launch = id, variant = job.variant, "sbatch refused: {e:#}");
                    self.refused(id, index, &format!("{e:#}"), submitted);
                    break;
                }
            }
            self.0.poke.notify_one();
        }
    }

    /// Variant `index` was refused with `why`: it fails with the scheduler's message, the
    /// launch's jobs already `submitted` are cancelled and the variants not yet submitted
    /// will not be.
    fn refused(&self, id: i64, index: usize, why: &str, submitted: Vec<String>) {
        let mut t = self.table();
        let Some(entry) = t.launches.get_mut(&id) else {
            return;
        };
        let at = now();
        let name = entry.record.variants[index].name.clone();
        for (i, v) in entry.record.variants.iter_mut().enumerate() {
            if v.state.is_final() {
                continue;
            }
            v.ended_at = Some(at);
            if i == index {
                v.state = VariantState::Failed;
                v.exit = Some("refused by the scheduler".into());
                v.stderr = why.lines().map(str::to_owned).collect();
            } else {
                v.state = VariantState::Cancelled;
                v.exit = Some(match v.job {
                    Some(_) => format!("cancelled: the scheduler refused variant {name}"),
                    None => format!("not submitted: the scheduler refused variant {name}"),
                });
            }
        }
        self.publish(entry);
        drop(t);
        if !submitted.is_empty() {
            tokio::task::spawn_blocking(move || {
                for job in submitted {
                    if let Err(e) = sbatch::cancel(&job, Stop::Kill) {
                        tracing::warn!(job, "cancelling after a refusal: {e:#}");
                    }
                }
            });
        }
    }

    /// Polls the scheduler until the server shuts down.
    pub(super) async fn follow_jobs(self, slurm: SlurmConfig) {
        let mut failing = false;
        loop {
            if self.table().closing {
                return;
            }
            match self.poll().await {
                Ok(()) if failing => {
                    tracing::info!("the scheduler answers again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!("reading the jobs' states: {e:#}");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(slurm.poll_every) => {}
                () = self.0.poke.notified() => {}
            }
        }
    }

    /// One round: every job's state, cancels sent, variants moved on.
    async fn poll(&self) -> anyhow::Result<()> {
        let tracked: Vec<Tracked> = {
            let t = self.table();
            t.launches
                .values()
                .flat_map(|e| {
                    e.record
                        .variants
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| !v.state.is_final())
                        .filter_map(|(index, v)| {
                            Some(Tracked {
                                launch: e.record.id,
                                index,
                                job: v.job.clone()?,
                                cancelled: e.record.cancelled || v.cancelled,
                                term: e.terms.get(&index).copied(),
                            })
                        })
                })
                .collect()
        };
        if tracked.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = tracked.iter().map(|t| t.job.clone()).collect();
        let mut states = tokio::task::spawn_blocking(move || sbatch::states(&ids)).await??;
        for t in tracked {
            let state = match states.remove(&t.job) {
                Some(s) => Some(s),
                None => {
                    let job = t.job.clone();
                    tokio::task::spawn_blocking(move || sbatch::forgotten(&job)).await?
                }
            };
            match state {
                Some(state) => {
                    if t.cancelled && !state.ended() {
                        self.stop(&t, &state).await;
                    }
                    self.apply(&t, state).await;
                }
                None => self.gone(&t).await,
            }
        }
        Ok(())
    }

    /// A cancelled launch's job: a pending one cancelled outright, a running one sent
    /// SIGTERM, and cancelled for good when it is still there after the stop grace.
    async fn stop(&self, t: &Tracked, state: &JobState) {
        let grace = self.0.config.stop_grace;
        let stop = match t.term {
            _ if state.pending() => Stop::Kill,
            None => Stop::Term,
            Some(at) if at.elapsed() > grace => Stop::Kill,
            Some(_) => return,
        };
        if stop == Stop::Term {
            let mut table = self.table();
            if let Some(entry) = table.launches.get_mut(&t.launch) {
                entry.terms.insert(t.index, Instant::now());
            }
        } else if !state.pending() {
            tracing::warn!(
                job = t.job,
                "a job did not stop within {grace:?} of its SIGTERM; cancelling it"
            );
        }
        let job = t.job.clone();
        let sent = tokio::task::spawn_blocking(move || sbatch::cancel(&job, stop)).await;
        if let Ok(Err(e)) = sent {
            // A job that started or ended in between: the next round tries again.
            tracing::debug!(job = t.job, "scancel: {e:#}");
        }
    }

    /// Moves a variant to where its job is.
    async fn apply(&self, t: &Tracked, state: JobState) {
        if !state.ended() {
            let (to, node) = match state.pending() {
                true => (VariantState::Queued, None),
                false => (VariantState::Running, Some(state.node.clone())),
            };
            let reason = match state.state.as_str() {
                "PENDING" => Some(state.reason.clone()).filter(|r| !r.is_empty()),
                "RUNNING" => None,
                other => Some(other.to_lowercase()),
            };
            let changed = {
                let mut table = self.table();
                let Some(entry) = table.launches.get_mut(&t.launch) else {
                    return;
                };
                let v = &mut entry.record.variants[t.index];
                let changed = v.state != to || v.node != node || v.reason != reason;
                if changed {
                    if to == VariantState::Running && v.started_at.is_none() {
                        v.started_at = Some(now());
                    }
                    v.state = to;
                    v.node = node;
                    v.reason = reason;
                    self.publish(entry);
                }
                changed
            };
            if to == VariantState::Running || changed {
                self.note_variant_run(t).await;
            }
            return;
        }
        let exit = state.exit.clone().unwrap_or_else(|| "exit unknown".into());
        let to = match state.state.as_str() {
            _ if t.cancelled => VariantState::Cancelled,
            "COMPLETED" => VariantState::Finished,
            "CANCELLED" => VariantState::Cancelled,
            _ => VariantState::Failed,
        };
        let ended = Ended {
            success: to == VariantState::Finished,
            exit: format!("{exit} ({})", state.state),
            stderr: match to {
                VariantState::Failed => self.output_tail(t).await,
                _ => Vec::new(),
            },
        };
        let reason = Some(state.reason.clone()).filter(|r| !r.is_empty());
        self.end(
            t,
            to,
            ended,
            Some(state.node).filter(|n| !n.is_empty()),
            reason,
        )
        .await;
    }

    /// A job neither `squeue` nor `sacct` knows any more: it ended long ago, as its run did.
    async fn gone(&self, t: &Tracked) {
        let run = self
            .get(t.launch)
            .ok()
            .and_then(|r| r.variants[t.index].run_id);
        let status = self.run_status(run).await;
        let to = match status {
            _ if t.cancelled => VariantState::Cancelled,
            Some(RunStatus::Finished) => VariantState::Finished,
            _ => VariantState::Failed,
        };
        let ended = Ended {
            success: to == VariantState::Finished,
            exit: format!("job {} is no longer known to the scheduler", t.job),
            stderr: Vec::new(),
        };
        self.end(t, to, ended, None, None).await;
    }

    /// A variant's job ended: its run is looked for once more, marked failed with the reason
    /// when the job failed, and the variant shows how it ended.
    async fn end(
        &self,
        t: &Tracked,
        to: VariantState,
        ended: Ended,
        node: Option<String>,
        reason: Option<String>,
    ) {
        self.note_variant_run(t).await;
        let run = self
            .get(t.launch)
            .ok()
            .and_then(|r| r.variants[t.index].run_id);
        if let (VariantState::Failed, Some(run)) = (to, run) {
            self.mark_failed(run, failure(&ended)).await;
        }
        let mut table = self.table();
        let Some(entry) = table.launches.get_mut(&t.launch) else {
            return;
        };
        entry.terms.remove(&t.index);
        let v = &mut entry.record.variants[t.index];
        if v.state.is_final() {
            return;
        }
        tracing::info!(
            launch = t.launch,
            variant = v.name,
            job = t.job,
            "job ended: {}",
            ended.exit
        );
        v.state = to;
        v.ended_at = Some(now());
        v.exit = Some(ended.exit);
        v.stderr = ended.stderr;
        if node.is_some() {
            v.node = node;
        }
        v.reason = reason;
        self.publish(entry);
    }

    async fn note_variant_run(&self, t: &Tracked) {
        let Ok(record) = self.get(t.launch) else {
            return;
        };
        if record.variants[t.index].run_id.is_none() {
            let job = self.job(&record, t.index);
            self.note_run(t.launch, t.index, &job).await;
        }
    }

    /// The last lines of a job's output file, when this server can read it.
    async fn output_tail(&self, t: &Tracked) -> Vec<String> {
        let log = self
            .get(t.launch)
            .ok()
            .and_then(|r| r.variants[t.index].log.clone());
        let Some(log) = log else {
            return Vec::new();
        };
        match tokio::fs::File::open(&log).await {
            Ok(file) => child::tail(file).await,
            Err(e) => vec![format!("its output {log} cannot be read here: {e}")],
        }
    }
}
