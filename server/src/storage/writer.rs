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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use keel_protocol::{
    CommandOutcome, CommandRecord, CommandStatus, EventRecord, IngestBatch, IngestReply,
    LiveMessage, RunSpec, RunStatus, Severity, StepRecord,
};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::incidents;
use super::summary::{LEVELS, Summary};
use super::{Change, Cursor, StoreError, StoreResult, codec, now, runs};
use crate::alerts::{Alert, Detector, Thresholds};
use crate::webhooks::{self, Notice, Notifier, RunRef};

/// Most writes applied in one transaction.
const MAX_OPS: usize = 256;
/// Runs whose alert state is kept in memory before it is emptied (it re-learns as steps come).
const MAX_DETECTORS: usize = 10_000;
/// Tail buckets kept in memory before the cache is emptied (it refills from the table).
const MAX_TAILS: usize = 50_000;

/// A new alert or other event.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub run_id: i64,
    pub kind: String,
    pub name: String,
    pub severity: Severity,
    pub step: Option<u64>,
    pub message: String,
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;

pub enum WriteOp {
    CreateRun(RunSpec, Reply<i64>),
    Ingest(i64, IngestBatch, Reply<IngestReply>),
    AddEvent(NewEvent, Reply<EventRecord>),
    /// A status change reported by the trainer or decided by the server (e.g. `lost`).
    SetStatus(i64, RunStatus, Option<String>, Reply<()>),
    AddCommand {
        run_id: i64,
        command: keel_protocol::Command,
        issued_by: String,
        reply: Reply<CommandRecord>,
    },
    /// Marks queued commands delivered and returns every command not yet applied or rejected.
    TakeCommands(i64, Reply<Vec<CommandRecord>>),
    Outcome(i64, i64, CommandOutcome, Reply<CommandRecord>),
    /// Replaces a run's rules; who did it goes in the audit log.
    SetRules(i64, Vec<keel_protocol::Rule>, String, Reply<()>),
    /// Replaces a run's alert thresholds (in force from its next step); audited.
    SetThresholds(i64, Thresholds, String, Reply<()>),
    /// Acknowledges an incident of a run, by whom; audited.
    AckIncident(i64, i64, String, Reply<keel_protocol::Incident>),
    /// Writes a launch's record as it now stands.
    SaveLaunch(super::launches::StoredLaunch, Reply<()>),
    /// Forgets launches that ended before the time given; answers how many.
    PruneLaunches(f64, Reply<u64>),
}

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
type TailKey = (i64, u32, u32, u64);

struct Writer {
    changes: mpsc::UnboundedSender<Change>,
    cursor: Cursor,
    /// Per run: (is_layer, name) → (series id, width).
    series: HashMap<i64, HashMap<SeriesKey, (u32, usize)>>,
    /// The newest bucket of each (run, branch, series, level), as last written.
    tails: HashMap<TailKey, (u64, Summary)>,
    /// Alert detectors of each (run, branch) that receives steps.
    detectors: HashMap<(i64, u32), Detector>,
    notifier: Arc<OnceLock<Notifier>>,
    /// Notices of the transaction under way: sent once it commits.
    notices: Vec<Notice>,
}

/// Starts the writer task on `conn`; it holds the database's `lock` until it stops.
pub async fn spawn(
    mut conn: SqliteConnection,
    changes: mpsc::UnboundedSender<Change>,
    notifier: Arc<OnceLock<Notifier>>,
    lock: super::lock::DbLock,
) -> anyhow::Result<mpsc::Sender<WriteOp>> {
    let (seq, event): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM runs), (SELECT COALESCE(MAX(id), 0) FROM events)",
    )
    .fetch_one(&mut conn)
    .await
    .context("reading the write cursors")?;
    let mut writer = Writer {
        changes,
        cursor: Cursor { seq, event },
        series: HashMap::new(),
        tails: HashMap::new(),
        detectors: HashMap::new(),
        notifier,
        notices: Vec::new(),
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
            writer.apply(&mut conn, ops).await;
        }
        tracing::debug!("writer stopped: every store handle is gone");
        drop(lock);
    });
    Ok(tx)
}

impl Writer {
    async fn apply(&mut self, conn: &mut SqliteConnection, ops: Vec<WriteOp>) {
        let before = self.cursor;
        let mut answers: Vec<Box<dyn Finish>> = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        let result = async {
            let mut tx = conn.begin().await?;
            for op in ops {
                answers.push(self.one(&mut tx, op, &mut changes).await?);
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        let failure = match result {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = ?e, "a write transaction failed and was rolled back");
                // The caches may hold what was rolled back: start them afresh.
                self.tails.clear();
                self.series.clear();
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
        for change in changes {
            let _ = self.changes.send(change);
        }
        let notices = std::mem::take(&mut self.notices);
        if let Some(notifier) = self.notifier.get() {
            notices.into_iter().for_each(|n| notifier.send(n));
        }
    }

    /// A notice about run `run_id`, sent if the transaction commits.
    async fn notify(
        &mut self,
        tx: &mut SqliteConnection,
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
        tx: &mut SqliteConnection,
        op: WriteOp,
        changes: &mut Vec<Change>,
    ) -> Result<Box<dyn Finish>, StoreError> {
        // Each arm refuses (Ok with an Err answer) before writing, or fails the transaction.
        Ok(match op {
            WriteOp::CreateRun(spec, reply) => {
                let result = create_run(tx, &spec).await;
                Box::new(Answer(reply, Ok(result?)))
            }
            WriteOp::Ingest(run_id, batch, reply) => {
                let result = self.ingest(tx, run_id, batch, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::AddEvent(event, reply) => {
                let result = self.add_event(tx, event, 0.0, changes).await;
                Box::new(Answer(reply, Ok(result?)))
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
                    for ((run, _), d) in self.detectors.iter_mut() {
                        if *run == run_id {
                            d.set_thresholds(thresholds.clone());
                        }
                    }
                }
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::AckIncident(run_id, id, by, reply) => {
                let result = self.ack_incident(tx, run_id, id, &by, changes).await;
                Box::new(Answer(reply, refusal(result)?))
            }
            WriteOp::SaveLaunch(launch, reply) => {
                super::launches::save(tx, &launch).await?;
                Box::new(Answer(reply, Ok(())))
            }
            WriteOp::PruneLaunches(before, reply) => {
                let n = super::launches::prune(tx, before).await?;
                Box::new(Answer(reply, Ok(n)))
            }
        })
    }

    async fn ingest(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        batch: IngestBatch,
        changes: &mut Vec<Change>,
    ) -> StoreResult<IngestReply> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let branch = resolve_branch(tx, &run, &batch).await?;
        let existing = existing_steps(tx, run_id, branch, &batch.steps).await?;
        let mut fresh: Vec<StepRecord> = Vec::with_capacity(batch.steps.len());
        let mut seen = HashSet::with_capacity(batch.steps.len());
        let total = batch.steps.len() as u64;
        for record in batch.steps {
            if !existing.contains(&record.step) && seen.insert(record.step) {
                fresh.push(record);
            }
        }
        let mut dirty: HashMap<(u32, u64, u64), Summary> = HashMap::new();
        let mut rows = Vec::with_capacity(fresh.len());
        for record in &fresh {
            self.cursor.seq += 1;
            let entries = self.entries(tx, run_id, record).await?;
            let mut blob = Vec::with_capacity(entries.iter().map(|e| 8 + 8 * e.1.len()).sum());
            for (id, values) in &entries {
                codec::put_entry(&mut blob, *id, values);
                for level in LEVELS {
                    let key = (*id, level, record.step / level);
                    if let Some(s) = dirty.get_mut(&key) {
                        s.add(record.step, values);
                    } else {
                        let merged = match self.bucket(tx, run_id, branch, key).await? {
                            Some(mut s) => {
                                s.add(record.step, values);
                                s
                            }
                            None => Summary::of(record.step, values),
                        };
                        dirty.insert(key, merged);
                    }
                }
            }
            rows.push((record.step as i64, self.cursor.seq, blob));
        }
        insert_steps(tx, run_id, branch, rows).await?;
        self.write_buckets(tx, run_id, branch, dirty).await?;
        self.note_steps(tx, &run, branch, &fresh).await?;
        if run.status == RunStatus::Lost && !fresh.is_empty() {
            let back = Some("the trainer is sending steps again".to_owned());
            self.set_status(tx, run_id, RunStatus::Running, back, changes)
                .await?;
        }
        let reply = IngestReply {
            accepted: fresh.len() as u64,
            duplicates: total - fresh.len() as u64,
            branch,
        };
        let alerts = self.judge(&run, branch, &fresh);
        if !fresh.is_empty() {
            let message = LiveMessage::Steps {
                branch,
                steps: fresh,
            };
            changes.push(self.change(run_id, message));
        }
        // Alerts follow the steps they are about, on the live channel too.
        for a in alerts {
            let event = NewEvent {
                run_id,
                kind: "alert".into(),
                name: a.name.into(),
                severity: a.severity,
                step: Some(a.step),
                message: a.message,
            };
            self.add_event(tx, event, a.size, changes).await?;
        }
        Ok(reply)
    }

    /// Runs the new steps of a branch through its alert detector, in step order.
    fn judge(&mut self, run: &runs::RunRow, branch: u32, fresh: &[StepRecord]) -> Vec<Alert> {
        if self.detectors.len() > MAX_DETECTORS {
            self.detectors.clear();
        }
        let detector = self.detectors.entry((run.id, branch)).or_insert_with(|| {
            let config = serde_json::from_str(&run.config).unwrap_or_default();
            let set = run
                .thresholds
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok());
            Detector::new(set.unwrap_or_else(|| Thresholds::from_config(&config)))
        });
        let mut ordered: Vec<&StepRecord> = fresh.iter().collect();
        ordered.sort_by_key(|r| r.step);
        ordered
            .into_iter()
            .flat_map(|r| detector.observe(r))
            .collect()
    }

    fn change(&self, run_id: i64, message: LiveMessage) -> Change {
        Change {
            run_id,
            cursor: self.cursor,
            message,
        }
    }

    /// The series of one step as (series id, values), registering new series on first sight.
    async fn entries(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        record: &StepRecord,
    ) -> StoreResult<Vec<(u32, Vec<f64>)>> {
        let mut out = Vec::with_capacity(record.scalars.len() + record.layers.len() + 2);
        let mut implicit = Vec::new();
        if let Some(time) = record.time {
            implicit.push(("time", time));
        }
        if let Some(tokens) = record.tokens {
            implicit.push(("tokens", tokens as f64));
        }
        let scalars = record.scalars.iter().map(|(k, v)| (k.as_str(), v.get()));
        for (name, value) in implicit.into_iter().chain(scalars) {
            let id = self.series_id(tx, run_id, false, name, 1).await?;
            out.push((id, vec![value]));
        }
        for (name, values) in &record.layers {
            let id = self.series_id(tx, run_id, true, name, values.len()).await?;
            out.push((id, values.iter().map(|v| v.get()).collect()));
        }
        Ok(out)
    }

    async fn series_id(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        layer: bool,
        name: &str,
        width: usize,
    ) -> StoreResult<u32> {
        let map = match self.series.entry(run_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let known = runs::series_of(&mut *tx, run_id).await?;
                let map = known
                    .into_iter()
                    .map(|s| ((s.layer, s.name), (s.id, s.width)));
                e.insert(map.collect())
            }
        };
        if let Some(&(id, known_width)) = map.get(&(layer, name.to_owned())) {
            if known_width != width {
                return Err(StoreError::Invalid(format!(
                    "`{name}` has {width} values where earlier steps had {known_width}"
                )));
            }
            return Ok(id);
        }
        let id = map.len() as u32;
        sqlx::query("INSERT INTO series (run_id, id, kind, name, width) VALUES (?, ?, ?, ?, ?)")
            .bind(run_id)
            .bind(id)
            .bind(if layer { "layer" } else { "scalar" })
            .bind(name)
            .bind(width as i64)
            .execute(&mut *tx)
            .await?;
        map.insert((layer, name.to_owned()), (id, width));
        Ok(id)
    }

    /// The stored summary of one bucket: from the tail cache, else from the table.
    async fn bucket(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        branch: u32,
        (series, level, bucket): (u32, u64, u64),
    ) -> StoreResult<Option<Summary>> {
        // Only a hit is trusted: the cache cannot know that a later bucket has no row (one
        // written before a restart or an eviction, or by a re-sent spill, is not in it).
        if let Some((b, s)) = self.tails.get(&(run_id, branch, series, level))
            && *b == bucket
        {
            return Ok(Some(s.clone()));
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT data FROM summaries
             WHERE run_id = ? AND branch = ? AND series_id = ? AND level = ? AND bucket = ?",
        )
        .bind(run_id)
        .bind(branch)
        .bind(series)
        .bind(level as i64)
        .bind(bucket as i64)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.and_then(|(data,)| Summary::decode(&data)))
    }

    async fn write_buckets(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        branch: u32,
        dirty: HashMap<(u32, u64, u64), Summary>,
    ) -> StoreResult<()> {
        if self.tails.len() > MAX_TAILS {
            self.tails.clear();
        }
        let mut rows = Vec::with_capacity(dirty.len());
        for ((series, level, bucket), summary) in dirty {
            rows.push((series, level as i64, bucket as i64, summary.encode()));
            let tail = self.tails.entry((run_id, branch, series, level));
            let tail = tail.or_insert((bucket, summary.clone()));
            if bucket >= tail.0 {
                *tail = (bucket, summary);
            }
        }
        // Many rows per statement: the per-statement cost dominates otherwise.
        for chunk in rows.chunks(150) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO summaries (run_id, branch, series_id, level, bucket, data) ",
            );
            q.push_values(chunk, |mut b, (series, level, bucket, data)| {
                b.push_bind(run_id)
                    .push_bind(branch)
                    .push_bind(*series)
                    .push_bind(*level)
                    .push_bind(*bucket)
                    .push_bind(data.as_slice());
            });
            q.build().execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Updates the run's row after new steps: newest step, loss, tokens, life signs.
    async fn note_steps(
        &mut self,
        tx: &mut SqliteConnection,
        run: &runs::RunRow,
        branch: u32,
        fresh: &[StepRecord],
    ) -> StoreResult<()> {
        // Steps of an abandoned branch (a late re-send) do not move the run's newest step.
        let live = branch >= run.branch;
        let newest = fresh.iter().filter(|_| live).max_by_key(|r| r.step);
        let (mut last_step, mut last_loss, mut tokens) = (run.last_step, run.last_loss, run.tokens);
        if let Some(r) = newest
            && last_step.is_none_or(|s| r.step >= s || branch > run.branch)
        {
            last_step = Some(r.step);
            if let Some(loss) = r.scalars.get("loss") {
                last_loss = Some(loss.get());
            }
            tokens = r.tokens.or(tokens);
        }
        let t = now();
        sqlx::query(
            "UPDATE runs SET last_step = ?, last_loss = ?, tokens = ?, steps = steps + ?, seq = ?,
             updated_at = ?, seen_at = ? WHERE id = ?",
        )
        .bind(last_step.map(|s| s as i64))
        .bind(last_loss.map(codec::f64_blob))
        .bind(tokens.map(|t| t as i64))
        .bind(fresh.len() as i64)
        .bind(self.cursor.seq)
        .bind(t)
        .bind(t)
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Replaces one of a run's settings (`rules` or `thresholds`, columns of `runs`) and says
    /// so in its events: who, and what it is now.
    async fn set_setting(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        setting: &'static str,
        text: String,
        by: &str,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let sql = match setting {
            "rules" => "UPDATE runs SET rules = ? WHERE id = ?",
            _ => "UPDATE runs SET thresholds = ? WHERE id = ?",
        };
        sqlx::query(sql)
            .bind(&text)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let event = NewEvent {
            run_id,
            kind: "settings".into(),
            name: setting.into(),
            severity: Severity::Info,
            step: run.last_step,
            message: format!("{setting} set by {by}: {text}"),
        };
        self.insert_event(tx, event, changes).await?;
        Ok(())
    }

    async fn ack_incident(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        id: i64,
        by: &str,
        changes: &mut Vec<Change>,
    ) -> StoreResult<keel_protocol::Incident> {
        let incident = incidents::acknowledge(tx, run_id, id, by, now()).await?;
        let event = NewEvent {
            run_id,
            kind: "incident".into(),
            name: "acknowledged".into(),
            severity: Severity::Info,
            step: Some(incident.start_step),
            message: format!(
                "incident {id} ({}, steps {}–{}) acknowledged by {by}",
                incident.name, incident.start_step, incident.end_step
            ),
        };
        self.insert_event(tx, event, changes).await?;
        Ok(incident)
    }

    /// Stores an event; an alert (of `size`, see [`crate::alerts::Alert::size`]) then joins
    /// its incident and fires the run's rules that are on it.
    async fn add_event(
        &mut self,
        tx: &mut SqliteConnection,
        e: NewEvent,
        size: f64,
        changes: &mut Vec<Change>,
    ) -> StoreResult<EventRecord> {
        let record = self.insert_event(tx, e, changes).await?;
        if record.kind == "alert" {
            let (incident, new) = incidents::note(tx, &record, size).await?;
            if new {
                let run_id = record.run_id;
                self.notify(tx, run_id, |run| Notice::Incident { run, incident })
                    .await?;
            }
            self.fire_rules(tx, &record, changes).await?;
        }
        Ok(record)
    }

    /// The rules of the run that are on this alert, each issuing its command unless it is in
    /// its cooldown or has fired its most; a `rule` event records each firing (its step is
    /// the alert's, which is how cooldowns and counts survive a restart).
    async fn fire_rules(
        &mut self,
        tx: &mut SqliteConnection,
        alert: &EventRecord,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let rules = runs::rules(&mut *tx, alert.run_id).await?;
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.on == alert.name) {
            let name = format!("rule:{i}");
            let (fired, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MAX(step) FROM events WHERE run_id = ? AND kind = 'rule' AND name = ?",
            )
            .bind(alert.run_id)
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
            if rule.max_firings.is_some_and(|m| fired >= i64::from(m)) {
                continue;
            }
            let step = alert.step.unwrap_or(0);
            if last.is_some_and(|l| step < l as u64 + rule.cooldown_steps) {
                continue;
            }
            // A rewind without a step goes back to the newest checkpoint before the alert.
            let mut action = rule.action.clone();
            if let keel_protocol::Command::Rewind {
                to_step: None,
                before_step: before @ None,
                ..
            } = &mut action
            {
                *before = alert.step;
            }
            let issued = self
                .add_command(tx, alert.run_id, action, name.clone(), changes)
                .await;
            let message = match issued {
                Ok(c) => format!(
                    "rule {i} (on {}) issued {} as command {}",
                    rule.on,
                    rule.action.kind(),
                    c.id
                ),
                // A run that has ended takes no commands: the firing is still told.
                Err(StoreError::Conflict(why)) => {
                    format!("rule {i} (on {}) could not act: {why}", rule.on)
                }
                Err(e) => return Err(e),
            };
            let event = NewEvent {
                run_id: alert.run_id,
                kind: "rule".into(),
                name,
                severity: Severity::Info,
                step: alert.step,
                message,
            };
            let event = self.insert_event(tx, event, changes).await?;
            self.notify(tx, alert.run_id, |run| Notice::Rule { run, event })
                .await?;
        }
        Ok(())
    }

    async fn insert_event(
        &mut self,
        tx: &mut SqliteConnection,
        e: NewEvent,
        changes: &mut Vec<Change>,
    ) -> StoreResult<EventRecord> {
        let time = now();
        let id = sqlx::query(
            "INSERT INTO events (run_id, kind, name, severity, step, message, time)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.run_id)
        .bind(&e.kind)
        .bind(&e.name)
        .bind(runs::severity_str(e.severity))
        .bind(e.step.map(|s| s as i64))
        .bind(&e.message)
        .bind(time)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        if e.kind == "alert" {
            sqlx::query("UPDATE runs SET alerts = alerts + 1 WHERE id = ?")
                .bind(e.run_id)
                .execute(&mut *tx)
                .await?;
        }
        self.cursor.event = id;
        let record = EventRecord {
            id,
            run_id: e.run_id,
            kind: e.kind,
            name: e.name,
            severity: e.severity,
            step: e.step,
            message: e.message,
            time,
        };
        changes.push(super::event_change(self.cursor, record.clone()));
        Ok(record)
    }

    async fn set_status(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        status: RunStatus,
        message: Option<String>,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let t = now();
        if run.status == status {
            // Nothing changes, but a trainer that says so is alive.
            sqlx::query("UPDATE runs SET seen_at = ? WHERE id = ?")
                .bind(t)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
        sqlx::query("UPDATE runs SET status = ?, updated_at = ?, seen_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(t)
            .bind(if status == RunStatus::Lost {
                run.seen_at
            } else {
                t
            })
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let severity = match status {
            RunStatus::Failed | RunStatus::Lost => Severity::Warning,
            _ => Severity::Info,
        };
        let event = NewEvent {
            run_id,
            kind: "status".into(),
            name: status.as_str().into(),
            severity,
            step: run.last_step,
            message: message.unwrap_or_else(|| format!("the run is {}", status.as_str())),
        };
        self.add_event(tx, event, 0.0, changes).await?;
        let message = LiveMessage::Status {
            status,
            branch: run.branch,
        };
        changes.push(self.change(run_id, message));
        Ok(())
    }

    async fn add_command(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        command: keel_protocol::Command,
        issued_by: String,
        changes: &mut Vec<Change>,
    ) -> StoreResult<CommandRecord> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        if run.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "run {run_id} is {} and takes no more commands",
                run.status.as_str()
            )));
        }
        let t = now();
        let body = serde_json::to_string(&command).map_err(anyhow::Error::from)?;
        let id = sqlx::query(
            "INSERT INTO commands (run_id, body, status, issued_by, created_at, updated_at)
             VALUES (?, ?, 'queued', ?, ?, ?)",
        )
        .bind(run_id)
        .bind(body)
        .bind(&issued_by)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        let record = runs::command(&mut *tx, run_id, id).await?;
        self.audit(tx, &record, changes).await?;
        Ok(record)
    }

    async fn take_commands(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        changes: &mut Vec<Change>,
    ) -> StoreResult<Vec<CommandRecord>> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        // A trainer asking for commands is alive.
        sqlx::query("UPDATE runs SET seen_at = ? WHERE id = ?")
            .bind(now())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if run.status == RunStatus::Lost {
            self.set_status(tx, run_id, RunStatus::Running, None, changes)
                .await?;
        }
        let open = runs::open_commands(&mut *tx, run_id).await?;
        let mut out = Vec::with_capacity(open.len());
        for mut command in open {
            if command.status == CommandStatus::Queued {
                command.status = CommandStatus::Delivered;
                command.updated_at = now();
                sqlx::query(
                    "UPDATE commands SET status = 'delivered', updated_at = ? WHERE id = ?",
                )
                .bind(command.updated_at)
                .bind(command.id)
                .execute(&mut *tx)
                .await?;
                self.audit(tx, &command, changes).await?;
            }
            out.push(command);
        }
        Ok(out)
    }

    async fn outcome(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        id: i64,
        outcome: CommandOutcome,
        changes: &mut Vec<Change>,
    ) -> StoreResult<CommandRecord> {
        let mut command = runs::command(&mut *tx, run_id, id).await?;
        if !outcome.status.is_final() {
            return Err(StoreError::Invalid(
                "an outcome is `applied` or `rejected`".into(),
            ));
        }
        if command.status.is_final() {
            // Reported twice (a retry after a lost answer): the first report stands.
            return Ok(command);
        }
        command.status = outcome.status;
        command.applied_step = outcome.step;
        command.message = outcome.message;
        command.updated_at = now();
        sqlx::query(
            "UPDATE commands SET status = ?, applied_step = ?, message = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(command.status.as_str())
        .bind(command.applied_step.map(|s| s as i64))
        .bind(&command.message)
        .bind(command.updated_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.audit(tx, &command, changes).await?;
        Ok(command)
    }

    /// Every state of every command is an event: that is the audit log.
    async fn audit(
        &mut self,
        tx: &mut SqliteConnection,
        command: &CommandRecord,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let kind = command.command.kind();
        let message = match (command.status, command.applied_step, &command.message) {
            (CommandStatus::Applied, Some(step), _) => format!("{kind} applied at step {step}"),
            (CommandStatus::Rejected, _, Some(why)) => format!("{kind} rejected: {why}"),
            (status, _, _) => format!("{kind} {} by {}", status.as_str(), command.issued_by),
        };
        let event = NewEvent {
            run_id: command.run_id,
            kind: "command".into(),
            name: format!("{kind}:{}", command.status.as_str()),
            severity: Severity::Info,
            step: command.applied_step,
            message,
        };
        self.insert_event(tx, event, changes).await?;
        changes.push(super::command_change(
            command.run_id,
            self.cursor,
            command.clone(),
        ));
        Ok(())
    }
}

/// Refusals become the caller's answer; database errors fail the transaction.
fn refusal<T>(result: StoreResult<T>) -> Result<StoreResult<T>, StoreError> {
    match result {
        Err(StoreError::Db(e)) => Err(StoreError::Db(e)),
        other => Ok(other),
    }
}

async fn create_run(tx: &mut SqliteConnection, spec: &RunSpec) -> StoreResult<i64> {
    let t = now();
    let id = sqlx::query(
        "INSERT INTO runs (name, grp, variant, tags, config, layers, ranks, status, created_at, updated_at, seen_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
    )
    .bind(&spec.name)
    .bind(&spec.group)
    .bind(&spec.variant)
    .bind(serde_json::to_string(&spec.tags).map_err(anyhow::Error::from)?)
    .bind(spec.config.to_string())
    .bind(spec.layers)
    .bind(spec.ranks)
    .bind(t)
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await?
    .last_insert_rowid();
    sqlx::query("INSERT INTO branches (run_id, branch, created_at) VALUES (?, 0, ?)")
        .bind(id)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// The branch a batch goes to. Naming the branch after the live one starts it (a rewind):
/// it forks from its parent just before the batch's first step.
async fn resolve_branch(
    tx: &mut SqliteConnection,
    run: &runs::RunRow,
    batch: &IngestBatch,
) -> StoreResult<u32> {
    let Some(branch) = batch.branch else {
        return Ok(run.branch);
    };
    if branch <= run.branch {
        return Ok(branch);
    }
    if branch != run.branch + 1 {
        return Err(StoreError::Conflict(format!(
            "branch {branch} does not exist; the live branch is {}",
            run.branch
        )));
    }
    let first = batch.steps.iter().map(|s| s.step).min().unwrap_or(0);
    sqlx::query(
        "INSERT INTO branches (run_id, branch, parent, fork_step, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(run.id)
    .bind(branch)
    .bind(run.branch)
    .bind(first.checked_sub(1).map(|s| s as i64))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE runs SET branch = ? WHERE id = ?")
        .bind(branch)
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
    Ok(branch)
}

/// Inserts raw step rows (step, seq, blob), many per statement.
async fn insert_steps(
    tx: &mut SqliteConnection,
    run_id: i64,
    branch: u32,
    rows: Vec<(i64, i64, Vec<u8>)>,
) -> StoreResult<()> {
    for chunk in rows.chunks(150) {
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO steps (run_id, branch, step, seq, data) ");
        q.push_values(chunk, |mut b, (step, seq, data)| {
            b.push_bind(run_id)
                .push_bind(branch)
                .push_bind(*step)
                .push_bind(*seq)
                .push_bind(data.as_slice());
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

async fn existing_steps(
    tx: &mut SqliteConnection,
    run_id: i64,
    branch: u32,
    steps: &[StepRecord],
) -> StoreResult<HashSet<u64>> {
    let (Some(lo), Some(hi)) = (
        steps.iter().map(|s| s.step).min(),
        steps.iter().map(|s| s.step).max(),
    ) else {
        return Ok(HashSet::new());
    };
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT step FROM steps WHERE run_id = ? AND branch = ? AND step BETWEEN ? AND ?",
    )
    .bind(run_id)
    .bind(branch)
    .bind(lo as i64)
    .bind(hi as i64)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(s,)| s as u64).collect())
}
