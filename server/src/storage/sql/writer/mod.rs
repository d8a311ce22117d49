//! The single writer: every write of the server goes through this task.
//!
//! It takes whatever writes are waiting (up to [`MAX_OPS`]), applies them in one transaction,
//! commits, and only then answers each caller and publishes the [`Change`]s in commit order.
//! A write that is refused (unknown run, conflicting branch) is refused before it writes
//! anything, so the others in the same transaction go ahead; a database error fails the
//! whole transaction and every write in it.
//!
//! Summaries are maintained here as steps arrive: every bucket a new step falls in, at every
//! level, is merged and rewritten in the same transaction as the step, so a reader never sees
//! a step without its summaries. The newest bucket per series and level is kept in memory
//! (`tails`) so that steady streaming reads each bucket back once, when it opens.
//!
//! - [`steps`]: ingest. - [`summaries`]: the buckets of new steps. - [`events`]: events,
//!   statuses, incidents, rules and the audit log. - [`commands`]: commands and outcomes.

mod commands;
mod events;
mod steps;
mod summaries;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use keel_protocol::{
    CommandOutcome, CommandRecord, CommandStatus, EventRecord, IngestBatch, IngestReply,
    LiveMessage, RunSpec, RunStatus, Severity, StepRecord,
};
use sqlx::{QueryBuilder, Row};
use tokio::sync::mpsc;

use super::incidents;
use super::ops::{NewEvent, Reply, WriteOp};
use super::summary::{LEVELS, Summary};
use super::{Change, Conn, Cursor, Db, StoreError, StoreResult, codec, now, runs};
use crate::alerts::{Alert, Detector, Thresholds};
use crate::webhooks::{self, Notice, Notifier, RunRef};

/// Most writes applied in one transaction.
const MAX_OPS: usize = 256;
/// Runs whose alert state is kept in memory before it is emptied (it re-learns as steps come).
const MAX_DETECTORS: usize = 10_000;
/// Most steps of other servers a detector catches up on before it judges this server's.
const CATCH_UP: i64 = 2_000;

/// An answer waiting for the commit.
trait Finish: Send {
    fn finish(self: Box<Self>, failure: Option<&str>);
}

struct Answer<T>(Reply<T>, StoreResult<T>);

impl<T: Send> Finish for Answer<T> {
    fn finish(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            Some(why) => Err(StoreError::Db(anyhow::anyhow!("{why}"))),
            None => self.1,
        };
        // The caller may have gone away (client hung up); the write stands all the same.
        let _ = self.0.send(result);
    }
}

type SeriesKey = (bool, String);

/// The alert detector of a branch and how far it has followed the branch's steps.
struct Judge {
    detector: Detector,
    /// The arrival number of the last step it saw.
    seen: i64,
    /// Another server on the database may have written steps since: it catches up on them
    /// (their alerts were that server's to raise) before it judges this server's.
    behind: bool,
}

struct Writer {
    changes: mpsc::UnboundedSender<Change>,
    cursor: Cursor,
    /// Per run: (is_layer, name) → (series id, width).
    series: HashMap<i64, HashMap<SeriesKey, (u32, usize)>>,
    /// The newest bucket of each (run, branch, series, level), as last written.
    tails: summaries::Tails,
    /// Alert detectors of each (run, branch) that receives steps.
    detectors: HashMap<(i64, u32), Judge>,
    notifier: Arc<OnceLock<Notifier>>,
    /// Notices of the transaction under way: sent once it commits.
    notices: Vec<Notice>,
    relay: Arc<super::Relay>,
}

/// Starts the writer task on `db` (a pool of one connection); on SQLite it holds the file's
/// `lock` until it stops. `relay` is how it takes turns with, and tells, other servers on the
/// database (nobody, on SQLite).
pub async fn spawn(
    db: super::Pool,
    changes: mpsc::UnboundedSender<Change>,
    notifier: Arc<OnceLock<Notifier>>,
    lock: Option<super::lock::DbLock>,
    relay: Arc<super::Relay>,
) -> anyhow::Result<mpsc::Sender<WriteOp>> {
    let cursor = runs::write_cursor(&db)
        .await
        .context("reading the write cursors")?;
    let mut writer = Writer {
        changes,
        cursor,
        series: HashMap::new(),
        tails: summaries::Tails::default(),
        detectors: HashMap::new(),
        notifier,
        notices: Vec::new(),
        relay,
    };
    let (tx, mut rx) = mpsc::channel::<WriteOp>(1024);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ops = vec![first];
            while ops.len() < MAX_OPS {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            writer.apply(&db, ops).await;
        }
        tracing::debug!("writer stopped: every store handle is gone");
        writer.relay.close();
        db.close().await;
        drop(lock);
    });
    Ok(tx)
}

impl Writer {
    async fn apply(&mut self, db: &super::Pool, ops: Vec<WriteOp>) {
        let before = self.cursor;
        let mut answers: Vec<Box<dyn Finish>> = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        let mut announced = None;
        let result = async {
            let mut tx = db.begin().await?;
            if let Some(now) = self.relay.take_turn(&mut tx).await?
                && now != self.cursor
            {
                // Another server wrote since this one's last commit: what is cached may be
                // stale (a bucket's tail, a run's series, what a detector has seen).
                self.moved_on();
                self.cursor = now;
            }
            for op in ops {
                answers.push(self.one(&mut tx, op, &mut changes).await?);
            }
            announced = self.relay.announce(&mut tx, &mut changes).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        let failure = match result {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = ?e, "a write transaction failed and was rolled back");
                self.relay.withdraw(announced);
                // The caches may hold what was rolled back: start them afresh.
                self.forget();
                self.cursor = before;
                changes.clear();
                self.notices.clear();
                // Thresholds set in the failed transaction may be in a detector: start afresh.
                self.detectors.clear();
                Some("the database refused the write")
            }
        };
        for answer in answers {
            answer.finish(failure);
        }
        // Left here unless the relay publishes them (PostgreSQL: once its listener hears).
        for change in changes {
            let _ = self.changes.send(change);
        }
        let notices = std::mem::take(&mut self.notices);
        if let Some(notifier) = self.notifier.get() {
            notices.into_iter().for_each(|n| notifier.send(n));
        }
    }

    /// Forgets what is cached from the tables.
    fn forget(&mut self) {
        self.tails.clear();
        self.series.clear();
    }

    /// Another server wrote since this one's last commit: the caches may be stale and the
    /// detectors may have missed steps.
    fn moved_on(&mut self) {
        self.forget();
        self.detectors.values_mut().for_each(|j| j.behind = true);
    }

    /// A notice about run `run_id`, sent if the transaction commits.
    async fn notify(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        make: impl FnOnce(RunRef) -> Notice,
    ) -> StoreResult<()> {
        if self.notifier.get().is_none() {
            return Ok(());
        }
        let run = runs::run_row(&mut *tx, run_id).await?;
        let config = serde_json::from_str(&run.config).unwrap_or_default();
        let run = RunRef {
            id: run.id,
            name: run.name,
            url: None,
            webhooks: webhooks::of_config(&config),
        };
        self.notices.push(make(run));
        Ok(())
    }

    async fn one(
        &mut self,
        tx: &mut Conn,
        op: WriteOp,
        changes: &mut Vec<Change>,
    ) -> Result<Box<dyn Finish>, StoreError> {
        // Each arm refuses (Ok with an Err answer) before writing, or fails the transaction.
        Ok(match op {
            WriteOp::CreateRun(spec, by, reply) => {
                let result = steps::create_run(tx, &spec, &by).await;
                Box::new(Answer(reply, Ok(result?)))
            }
            WriteOp::Ingest(run_id, batch, reply) => {
                let result = self.ingest(tx, run_id, batch, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::AddEvent(event, reply) => {
                let result = match self.told_already(tx, &event).await? {
                    Some(told) => told,
                    None => self.add_event(tx, event, 0.0, changes).await?,
                };
                Box::new(Answer(reply, Ok(result)))
            }
            WriteOp::SetStatus(run_id, status, message, reply) => {
                let result = self.set_status(tx, run_id, status, message, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::AddCommand {
                run_id,
                command,
                issued_by,
                reply,
            } => {
                let result = self
                    .add_command(tx, run_id, command, issued_by, changes)
                    .await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::TakeCommands(run_id, reply) => {
                let result = self.take_commands(tx, run_id, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::Outcome(run_id, id, outcome, reply) => {
                let result = self.outcome(tx, run_id, id, outcome, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::SetRules(run_id, rules, by, reply) => {
                let text = serde_json::to_string(&rules).map_err(anyhow::Error::from)?;
                let result = self
                    .set_setting(tx, run_id, "rules", text, &by, changes)
                    .await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::SetThresholds(run_id, thresholds, by, reply) => {
                let text = serde_json::to_string(&thresholds).map_err(anyhow::Error::from)?;
                let result = self
                    .set_setting(tx, run_id, "thresholds", text, &by, changes)
                    .await;
                if result.is_ok() {
                    // In force from the next step: the detectors keep what they have seen.
                    for ((run, _), j) in self.detectors.iter_mut() {
                        if *run == run_id {
                            j.detector.set_thresholds(thresholds.clone());
                        }
                    }
                }
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::AckIncident(run_id, id, by, reply) => {
                let result = self.ack_incident(tx, run_id, id, &by, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::ReserveLaunch(owner, reply) => {
                let id = super::launches::reserve(tx, &owner).await?;
                Box::new(Answer(reply, Ok(id)))
            }
            WriteOp::SaveLaunch(launch, reply) => {
                super::launches::save(tx, &launch).await?;
                self.relay.announce_launch(tx, launch.record.id).await?;
                Box::new(Answer(reply, Ok(())))
            }
            WriteOp::PruneLaunches(before, reply) => {
                let n = super::launches::prune(tx, before).await?;
                Box::new(Answer(reply, Ok(n)))
            }
            WriteOp::OpenSession(id, session, reply) => {
                super::sessions::open(tx, &id, &session, now()).await?;
                Box::new(Answer(reply, Ok(())))
            }
            WriteOp::CloseSession(id, reply) => {
                super::sessions::close(tx, &id).await?;
                Box::new(Answer(reply, Ok(())))
            }
            WriteOp::AddUser(name, role, reply) => {
                let result = super::users::add(&mut *tx, &name, role).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::SetRole(name, role, reply) => {
                let result = super::users::set_role(&mut *tx, &name, role).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::RemoveUser(name, reply) => {
                let result = super::users::remove(tx, &name).await;
                Box::new(Answer(reply, refusal(result)?))
            }
        })
    }

    fn change(&self, run_id: i64, message: LiveMessage) -> Change {
        Change {
            run_id,
            cursor: self.cursor,
            message,
        }
    }
}

/// Refusals become the caller's answer; database errors fail the transaction.
fn refusal<T>(result: StoreResult<T>) -> Result<StoreResult<T>, StoreError> {
    match result {
        Err(StoreError::Db(e)) => Err(StoreError::Db(e)),
        other => Ok(other),
    }
}
