//! The launches of a server: their states, the queue of variants waiting for a trainer slot,
//! and the trainers running. One lock guards it all and is never held across an await or a
//! process start; each running trainer has a task that follows it to its end.
//!
//! Every change of a launch is written to the store (in order, by one task), with the process
//! ids of its running trainers. A server that starts on the database again — after a clean
//! stop or a SIGKILL — shows every launch as it was, queues the variants that were waiting, and
//! adopts the trainers that are still running (they reconnect on their own): it follows them
//! to their end and can stop them. A variant whose trainer is gone takes its run's last status.
//! Launches that ended more than [`super::LaunchConfig::retention`] ago are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use keel_protocol::{
    GridInfo, LaunchRecord, LaunchRequest, LaunchVariant, RunStatus, VariantState,
};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::child::{self, Ended};
use super::sbatch::{self, SbatchOptions};
use super::{Engine, Job, LaunchConfig, grids};
use crate::error::AppError;
use crate::storage::launches::{ASK_TIMEOUT_S, CancelAsk, LaunchNews, StoredLaunch};
use crate::storage::{Store, now};

/// The launches of this server: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Launches(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub(super) config: LaunchConfig,
    server: String,
    pub(super) token: String,
    pub(super) store: Store,
    /// This server among those on its database (`--replica`): the owner of its launches.
    owner: String,
    table: Mutex<Table>,
    changes: broadcast::Sender<Arc<LaunchRecord>>,
    /// Records to write, in the order they changed.
    saves: mpsc::UnboundedSender<Save>,
    /// Woken whenever a trainer exits (shutdown waits for the last one).
    exited: Notify,
    /// Wakes the SLURM poller before its time: a job submitted or a launch cancelled.
    pub(super) poke: Notify,
}

/// What the saving task is asked: a record to write, or to say when all before it are written.
enum Save {
    Launch(StoredLaunch),
    Written(oneshot::Sender<()>),
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) launches: BTreeMap<i64, Entry>,
    /// (launch, variant index) of every queued variant, oldest first.
    queue: VecDeque<(i64, usize)>,
    running: usize,
    next_id: i64,
    /// Set at shutdown: nothing new starts.
    pub(super) closing: bool,
}

pub(super) struct Entry {
    pub(super) record: LaunchRecord,
    /// The stop switch of each running variant, by index.
    stops: HashMap<usize, CancellationToken>,
    /// The process id of each running variant's trainer, by index.
    pids: BTreeMap<usize, u32>,
    /// When each SLURM job being cancelled was sent SIGTERM, by index.
    pub(super) terms: HashMap<usize, Instant>,
}

impl Entry {
    fn new(record: LaunchRecord) -> Entry {
        Entry {
            record,
            stops: HashMap::new(),
            pids: BTreeMap::new(),
            terms: HashMap::new(),
        }
    }

    /// The record as it is shown: `active` follows the variants.
    pub(super) fn snapshot(&self) -> LaunchRecord {
        let mut r = self.record.clone();
        r.active = r.variants.iter().any(|v| !v.state.is_final());
        r
    }
}

/// Tells this server's live stream of each launch that another server on the database wrote,
/// and answers the others' requests to cancel this server's launches, until the store or the
/// launches are gone.
async fn follow_others(launches: Weak<Inner>, mut news: broadcast::Receiver<LaunchNews>) {
    loop {
        let heard = match news.recv().await {
            Ok(heard) => heard,
            Err(broadcast::error::RecvError::Lagged(_)) => LaunchNews::Missed,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = launches.upgrade() else {
            return;
        };
        let this = Launches(inner);
        if let LaunchNews::Cancel(ask) = heard {
            if ask.to == this.0.owner {
                tokio::spawn(this.cancel_for(ask));
            }
            continue;
        }
        let others = match this.others().await {
            Ok(others) => others,
            Err(e) => {
                tracing::warn!("reading the other servers' launches: {e:?}");
                continue;
            }
        };
        for (record, _) in others {
            if heard == LaunchNews::Missed || heard == LaunchNews::Changed(record.id) {
                let _ = this.0.changes.send(Arc::new(record));
            }
        }
    }
}

/// How often the run of a starting trainer is looked for.
const FIND_RUN_EVERY: Duration = Duration::from_millis(200);

impl Launches {
    /// `server` is the server's own URL and `token` its operator token, both for the trainers.
    /// The launches stored by an earlier server on this database come back (see the module
    /// notes): their waiting variants are queued again and their live trainers adopted. On a
    /// database several servers share, only those of `owner` (this server's name) do; the
    /// others' are shown but stay theirs.
    pub async fn open(
        config: LaunchConfig,
        server: String,
        token: String,
        store: Store,
        owner: String,
    ) -> anyhow::Result<Launches> {
        let forget_before = now() - config.retention.as_secs_f64();
        let pruned = store.prune_launches(forget_before).await?;
        if pruned > 0 {
            tracing::info!(
                "forgot {pruned} launches that ended over {:?} ago",
                config.retention
            );
        }
        let shared = store.is_shared();
        let kept: Vec<_> = store
            .launches()
            .await?
            .into_iter()
            .filter(|l| !shared || l.owner == owner)
            .collect();
        let (saves, mut to_save) = mpsc::unbounded_channel();
        let writer = store.clone();
        tokio::spawn(async move {
            while let Some(save) = to_save.recv().await {
                match save {
                    Save::Launch(launch) => {
                        let id = launch.record.id;
                        if let Err(e) = writer.save_launch(launch).await {
                            tracing::warn!(launch = id, "saving a launch: {e:#}");
                        }
                    }
                    Save::Written(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        let launches = Launches(Arc::new(Inner {
            config,
            server,
            token,
            store,
            owner,
            table: Mutex::default(),
            changes: broadcast::channel(256).0,
            saves,
            exited: Notify::new(),
            poke: Notify::new(),
        }));
        let mut submit = Vec::new();
        for launch in kept {
            submit.extend(launches.restore(launch).await);
        }
        launches.pump();
        if let Some(news) = launches.0.store.launch_news() {
            tokio::spawn(follow_others(Arc::downgrade(&launches.0), news));
        }
        if let Engine::Slurm(slurm) = &launches.0.config.engine {
            sbatch::check_installed()?;
            for (id, indexes) in submit {
                launches.resubmit(id, indexes);
            }
            tokio::spawn(launches.clone().follow_jobs(slurm.clone()));
        } else if launches.tracks_jobs() {
            tracing::warn!(
                "launches stored here have SLURM jobs, which this server does not follow \
                 (it was not started with --launcher slurm)"
            );
        }
        Ok(launches)
    }

    /// One stored launch back in the table: queued variants queued again, running ones
    /// adopted when their trainer still runs, else ended as their run did. Variants with a
    /// SLURM job stay as they are, for the poller to follow. Returns the launch's variants
    /// that are to be submitted to SLURM, when it has any.
    async fn restore(&self, launch: StoredLaunch) -> Option<(i64, Vec<usize>)> {
        let StoredLaunch {
            mut record, pids, ..
        } = launch;
        let id = record.id;
        let slurm = matches!(self.0.config.engine, Engine::Slurm(_));
        let mut adopt = Vec::new();
        let mut queue = Vec::new();
        let mut submit = Vec::new();
        for (index, v) in record.variants.iter_mut().enumerate() {
            if v.job.is_some() && !v.state.is_final() {
                continue;
            }
            match v.state {
                VariantState::Queued if !record.cancelled && !v.cancelled && slurm => {
                    submit.push(index)
                }
                VariantState::Queued if !record.cancelled && !v.cancelled => queue.push(index),
                VariantState::Queued => v.state = VariantState::Cancelled,
                VariantState::Running => match pids.get(&index) {
                    Some(&pid) if child::is_trainer(pid, &v.name, &record.group) => {
                        adopt.push((index, pid))
                    }
                    _ => {
                        let status = self.run_status(v.run_id).await;
                        v.state = match status {
                            Some(RunStatus::Finished) => VariantState::Finished,
                            _ if record.cancelled || v.cancelled => VariantState::Cancelled,
                            _ => VariantState::Failed,
                        };
                        v.ended_at = Some(now());
                        if v.state == VariantState::Failed {
                            v.stderr =
                                vec!["its trainer was gone when the server started again".into()];
                        }
                    }
                },
                _ => {}
            }
        }
        let mut t = self.table();
        t.next_id = t.next_id.max(id);
        t.queue.extend(queue.into_iter().map(|i| (id, i)));
        let mut entry = Entry::new(record);
        for (index, pid) in adopt {
            let stop = CancellationToken::new();
            if entry.record.cancelled || entry.record.variants[index].cancelled {
                stop.cancel();
            }
            entry.stops.insert(index, stop.clone());
            entry.pids.insert(index, pid);
            t.running += 1;
            let v = &entry.record.variants[index];
            tracing::info!(
                launch = id,
                variant = v.name,
                pid,
                "adopted a trainer an earlier server started"
            );
            let job = self.job(&entry.record, index);
            let this = self.clone();
            tokio::spawn(async move { this.watch_adopted(id, index, job, pid, stop).await });
        }
        self.publish(&entry);
        t.launches.insert(id, entry);
        (!submit.is_empty()).then_some((id, submit))
    }

    /// Whether a launch has a SLURM job that has not ended.
    fn tracks_jobs(&self) -> bool {
        let t = self.table();
        t.launches.values().any(|e| {
            e.record
                .variants
                .iter()
                .any(|v| v.job.is_some() && !v.state.is_final())
        })
    }

    pub fn config(&self) -> &LaunchConfig {
        &self.0.config
    }

    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.0.table.lock().expect("launch table lock")
    }

    /// Every launch change from now on, as the whole record.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LaunchRecord>> {
        self.0.changes.subscribe()
    }

    /// Writes the entry to the store (in order with its other changes).
    fn save(&self, entry: &Entry) -> LaunchRecord {
        let record = entry.snapshot();
        let _ = self.0.saves.send(Save::Launch(StoredLaunch {
            record: record.clone(),
            pids: entry.pids.clone(),
            owner: self.0.owner.clone(),
        }));
        record
    }

    /// Returns once every change saved so far is written.
    async fn written(&self) {
        let (done, written) = oneshot::channel();
        if self.0.saves.send(Save::Written(done)).is_ok() {
            let _ = written.await;
        }
    }

    /// Saves the entry and tells the live stream.
    pub(super) fn publish(&self, entry: &Entry) {
        let record = self.save(entry);
        // An error only means that nobody listens.
        let _ = self.0.changes.send(Arc::new(record));
    }

    /// The grids with their variants (asked for each time, so a grid file edited or added
    /// shows at once).
    pub async fn grids(&self) -> Result<Vec<GridInfo>, AppError> {
        let launcher = self.0.config.launcher.clone();
        let read = move || -> anyhow::Result<Vec<GridInfo>> {
            let names = launcher.grids()?;
            let infos = names
                .into_iter()
                .map(|name| match launcher.variants(&name) {
                    Ok(variants) => GridInfo {
                        name,
                        variants,
                        error: None,
                    },
                    Err(e) => GridInfo {
                        name,
                        variants: Vec::new(),
                        error: Some(format!("{e:#}")),
                    },
                });
            Ok(infos.collect())
        };
        let infos = tokio::task::spawn_blocking(read)
            .await
            .map_err(anyhow::Error::from)??;
        Ok(infos)
    }

    /// Queues every variant of the grid and starts as many as the limit allows.
    pub async fn launch(
        &self,
        req: LaunchRequest,
        issued_by: String,
    ) -> Result<LaunchRecord, AppError> {
        req.validate().map_err(AppError::Invalid)?;
        let (variants, options) = self.variants(&req.grid).await?;
        if self.table().closing {
            return Err(AppError::Conflict("the server is shutting down".into()));
        }
        // The database hands out ids: other servers on it launch too.
        let id = self.0.store.reserve_launch(self.0.owner.clone()).await?;
        let id = {
            let mut t = self.table();
            t.next_id = t.next_id.max(id);
            let group = unique_group(&t, &req.grid, id, self.0.store.is_shared());
            let entry = Entry::new(LaunchRecord {
                id,
                grid: req.grid,
                group,
                steps: req.steps,
                issued_by,
                created_at: now(),
                cancelled: false,
                active: true,
                variants: variants.into_iter().map(queued).collect(),
            });
            if options.is_none() {
                t.queue
                    .extend((0..entry.record.variants.len()).map(|i| (id, i)));
            }
            tracing::info!(launch = id, group = %entry.record.group, "launching {} variants", entry.record.variants.len());
            self.publish(&entry);
            t.launches.insert(id, entry);
            id
        };
        match options {
            Some(options) => {
                let indexes = (0..self.get(id)?.variants.len()).collect();
                tokio::spawn(self.clone().submit(id, indexes, options));
            }
            None => self.pump(),
        }
        // Answered once it is in the database: the other servers on it list it from there.
        if self.0.store.is_shared() {
            self.written().await;
        }
        self.get(id)
    }

    /// The variants of the grid asked for, and under SLURM the `sbatch` options of its jobs:
    /// 422 for a name that cannot be a grid's or a grid that does not load, 404 for one that
    /// is not there.
    async fn variants(&self, name: &str) -> Result<(Vec<String>, Option<SbatchOptions>), AppError> {
        let launcher = self.0.config.launcher.clone();
        let engine = self.0.config.engine.clone();
        let grid = name.to_owned();
        let (variants, options) = tokio::task::spawn_blocking(move || {
            grids::check(&grid, &launcher.grids()?)?;
            let does_not_load =
                |e: anyhow::Error| AppError::Invalid(format!("grid `{grid}` does not load: {e:#}"));
            let variants = launcher.variants(&grid).map_err(does_not_load)?;
            let options = match engine {
                Engine::Local => None,
                Engine::Slurm(slurm) => {
                    let own = launcher.sbatch_options(&grid).map_err(does_not_load)?;
                    let options = slurm.options.with(&own);
                    options.check().map_err(does_not_load)?;
                    Some(options)
                }
            };
            Ok::<_, AppError>((variants, options))
        })
        .await
        .map_err(anyhow::Error::from)??;
        if variants.is_empty() {
            return Err(AppError::Invalid(format!("grid `{name}` has no variants")));
        }
        Ok((variants, options))
    }

    /// Every launch, newest first.
    pub fn list(&self) -> Vec<LaunchRecord> {
        let t = self.table();
        t.launches.values().rev().map(Entry::snapshot).collect()
    }

    /// Every launch on the database, newest first: this server's as it runs them, and on a
    /// shared database the other servers' as they last wrote them.
    pub async fn list_all(&self) -> Result<Vec<LaunchRecord>, AppError> {
        let mut all = self.list();
        all.extend(self.others().await?.into_iter().map(|(r, _)| r));
        all.sort_by_key(|r| std::cmp::Reverse(r.id));
        Ok(all)
    }

    /// Launch `id`, whichever server on the database runs it.
    pub async fn find(&self, id: i64) -> Result<LaunchRecord, AppError> {
        match self.get(id) {
            Err(AppError::NotFound(_)) => self
                .others()
                .await?
                .into_iter()
                .find(|(r, _)| r.id == id)
                .map(|(r, _)| r)
                .ok_or_else(|| not_found(id)),
            found => found,
        }
    }

    /// The launches of the other servers on a shared database, with their owners.
    async fn others(&self) -> Result<Vec<(LaunchRecord, String)>, AppError> {
        if !self.0.store.is_shared() {
            return Ok(Vec::new());
        }
        let stored = self.0.store.launches().await?;
        Ok(stored
            .into_iter()
            .filter(|l| l.owner != self.0.owner)
            .map(|l| {
                let mut r = l.record;
                r.active = r.variants.iter().any(|v| !v.state.is_final());
                (r, l.owner)
            })
            .collect())
    }

    /// Cancels launch `id`, or its variant `variant` alone, on whichever server on the
    /// database runs it: here at once, else by asking that server (503 when it does not
    /// answer). Answers the launch as it is then.
    pub async fn cancel_anywhere(
        &self,
        id: i64,
        variant: Option<&str>,
    ) -> Result<LaunchRecord, AppError> {
        if self.get(id).is_ok() {
            return self.cancel_here(id, variant);
        }
        let (_, owner) = self
            .others()
            .await?
            .into_iter()
            .find(|(r, _)| r.id == id)
            .ok_or_else(|| not_found(id))?;
        let answer = self
            .0
            .store
            .ask_to_cancel(&owner, id, variant.map(str::to_owned))
            .await?;
        match answer {
            Some(Ok(())) => self.find(id).await,
            Some(Err((404, why))) => Err(AppError::NotFound(why)),
            Some(Err((409, why))) => Err(AppError::Conflict(why)),
            Some(Err((_, why))) => Err(anyhow::anyhow!("the server `{owner}`: {why}").into()),
            None => Err(AppError::Busy(
                format!(
                    "the server `{owner}` that runs launch {id} did not answer within \
                     {ASK_TIMEOUT_S} s: is it running?"
                ),
                ASK_TIMEOUT_S,
            )),
        }
    }

    /// Does what another server on the database asks (see [`Launches::cancel_anywhere`]) and
    /// answers once the launch is written, so that it reads the launch as cancelled.
    async fn cancel_for(self, ask: CancelAsk) {
        let answer = match self.cancel_here(ask.launch, ask.variant.as_deref()) {
            Ok(_) => {
                self.written().await;
                Ok(())
            }
            Err(e) => Err((e.status().as_u16(), e.to_string())),
        };
        if let Err(e) = self.0.store.answer(&ask, answer).await {
            tracing::warn!(launch = ask.launch, "answering a request to cancel: {e:?}");
        }
    }

    pub fn get(&self, id: i64) -> Result<LaunchRecord, AppError> {
        let t = self.table();
        let entry = t.launches.get(&id).ok_or_else(|| not_found(id))?;
        Ok(entry.snapshot())
    }

    /// Cancels this server's launch `id`, or its variant `variant` alone.
    fn cancel_here(&self, id: i64, variant: Option<&str>) -> Result<LaunchRecord, AppError> {
        match variant {
            None => self.cancel(id),
            Some(name) => self.cancel_variant(id, name),
        }
    }

    /// Cancels the queued variants at once and asks the running ones to stop; they show as
    /// `cancelled` when their process has exited. 409 when nothing is left to cancel.
    pub fn cancel(&self, id: i64) -> Result<LaunchRecord, AppError> {
        let mut t = self.table();
        let Table {
            launches, queue, ..
        } = &mut *t;
        let entry = launches.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !entry.snapshot().active {
            return Err(AppError::Conflict(format!(
                "launch {id} has ended; nothing is left to cancel"
            )));
        }
        entry.record.cancelled = true;
        queue.retain(|(launch, _)| *launch != id);
        cancel_queued(entry);
        for stop in entry.stops.values() {
            stop.cancel();
        }
        tracing::info!(launch = id, "launch cancelled");
        self.publish(entry);
        // SLURM jobs are stopped by the poller, at once.
        self.0.poke.notify_one();
        Ok(entry.snapshot())
    }

    /// Cancels variant `name` of launch `id` alone: at once when it is queued (a SLURM job
    /// that waits is cancelled by the poller), else its trainer is asked to stop as a
    /// launch's cancel would. 404 for an unknown variant, 409 when it has ended; asking
    /// again while it stops changes nothing.
    pub fn cancel_variant(&self, id: i64, name: &str) -> Result<LaunchRecord, AppError> {
        let mut t = self.table();
        let Table {
            launches, queue, ..
        } = &mut *t;
        let entry = launches.get_mut(&id).ok_or_else(|| not_found(id))?;
        let index = entry
            .record
            .variants
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| AppError::NotFound(format!("launch {id} has no variant `{name}`")))?;
        let v = &mut entry.record.variants[index];
        if v.state.is_final() {
            return Err(AppError::Conflict(format!(
                "variant `{name}` of launch {id} has ended ({}); nothing is left to cancel",
                format!("{:?}", v.state).to_lowercase()
            )));
        }
        if v.cancelled || entry.record.cancelled {
            return Ok(entry.snapshot());
        }
        v.cancelled = true;
        queue.retain(|&(launch, i)| (launch, i) != (id, index));
        if v.state == VariantState::Queued && v.job.is_none() {
            v.state = VariantState::Cancelled;
            v.ended_at = Some(now());
        }
        if let Some(stop) = entry.stops.get(&index) {
            stop.cancel();
        }
        tracing::info!(launch = id, variant = name, "variant cancelled");
        self.publish(entry);
        self.0.poke.notify_one();
        Ok(entry.snapshot())
    }

    /// Shutdown: nothing new starts, queued variants are cancelled and running trainers are
    /// stopped (SIGTERM, then SIGKILL after the grace period). Returns once they have exited,
    /// or after the grace period and a little more. SLURM jobs go on: they do not need this
    /// server, and the next one on this database follows them.
    pub async fn stop_all(&self) {
        {
            let mut t = self.table();
            t.closing = true;
            t.queue.clear();
            for entry in t.launches.values_mut() {
                entry.stops.values().for_each(CancellationToken::cancel);
                if cancel_queued(entry) {
                    self.publish(entry);
                }
            }
        }
        let all_exited = async {
            loop {
                // Created before the check, so an exit in between still wakes it.
                let exited = self.0.exited.notified();
                if self.table().running == 0 {
                    return;
                }
                exited.await;
            }
        };
        let limit = self.0.config.stop_grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, all_exited).await.is_err() {
            tracing::warn!("trainers still running after {limit:?}; leaving them to be killed");
        }
    }

    /// What the trainer of variant `index` of `record` is started with.
    pub(super) fn job(&self, record: &LaunchRecord, index: usize) -> Job {
        Job {
            grid: record.grid.clone(),
            variant: record.variants[index].name.clone(),
            group: record.group.clone(),
            steps: record.steps,
            server: self.0.server.clone(),
        }
    }

    /// The status of a variant's run, when it has one.
    pub(super) async fn run_status(&self, run: Option<i64>) -> Option<RunStatus> {
        let row = self.0.store.run_row(run?).await;
        row.ok().map(|r| r.status)
    }

    /// Starts queued variants while a trainer slot is free.
    fn pump(&self) {
        while let Some((id, index, job, stop)) = self.next_job() {
            let cmd = self.0.config.launcher.command(&job);
            match child::spawn(cmd, &self.0.token) {
                Ok(process) => {
                    if let Some(pid) = process.id() {
                        let mut t = self.table();
                        if let Some(entry) = t.launches.get_mut(&id) {
                            entry.pids.insert(index, pid);
                            // Only the store needs the pid; the record shown is the same.
                            self.save(entry);
                        }
                    }
                    let this = self.clone();
                    tokio::spawn(async move { this.watch(id, index, job, process, stop).await });
                }
                Err(e) => {
                    tracing::warn!(
                        launch = id,
                        variant = job.variant,
                        "could not start a trainer: {e}"
                    );
                    self.finish(id, index, Ended::not_started(e));
                }
            }
        }
    }

    /// Takes the oldest queued variant if a slot is free, marking it running.
    fn next_job(&self) -> Option<(i64, usize, Job, CancellationToken)> {
        let mut t = self.table();
        if t.closing || t.running >= self.0.config.max_trainers.max(1) {
            return None;
        }
        let (id, index) = t.queue.pop_front()?;
        t.running += 1;
        let entry = t
            .launches
            .get_mut(&id)
            .expect("a queued variant's launch exists");
        let variant = &mut entry.record.variants[index];
        variant.state = VariantState::Running;
        variant.started_at = Some(now());
        let job = self.job(&entry.record, index);
        let stop = CancellationToken::new();
        entry.stops.insert(index, stop.clone());
        self.publish(entry);
        Some((id, index, job, stop))
    }

    /// Follows one trainer to its end, noting its run as soon as it exists; then frees its
    /// slot for the next queued variant.
    async fn watch(
        self,
        id: i64,
        index: usize,
        job: Job,
        process: tokio::process::Child,
        stop: CancellationToken,
    ) {
        let supervised = child::supervise(process, stop, self.0.config.stop_grace);
        tokio::pin!(supervised);
        let ended = tokio::select! {
            ended = &mut supervised => ended,
            () = self.find_run(id, index, &job) => supervised.await,
        };
        // A run created just before the trainer exited is still found.
        self.note_run(id, index, &job).await;
        // The run says why before the launch shows the variant ended.
        let failed_run = (!ended.success)
            .then(|| self.uncancelled_run(id, index))
            .flatten();
        if let Some(run) = failed_run {
            self.mark_failed(run, failure(&ended)).await;
        }
        self.finish(id, index, ended);
        self.pump();
    }

    /// Follows a trainer an earlier server started until it exits; it ended well when its run
    /// says `finished`.
    async fn watch_adopted(
        self,
        id: i64,
        index: usize,
        job: Job,
        pid: u32,
        stop: CancellationToken,
    ) {
        let followed = child::follow_adopted(pid, stop, self.0.config.stop_grace);
        tokio::pin!(followed);
        tokio::select! {
            () = &mut followed => {},
            () = self.find_run(id, index, &job) => followed.await,
        }
        self.note_run(id, index, &job).await;
        let run = self.get(id).ok().and_then(|r| r.variants[index].run_id);
        let status = self.run_status(run).await;
        let ended = Ended {
            success: status == Some(RunStatus::Finished),
            exit: "exited (adopted after a server restart: its exit status is not known)".into(),
            stderr: Vec::new(),
        };
        if let Some(run) = (!ended.success)
            .then(|| self.uncancelled_run(id, index))
            .flatten()
        {
            self.mark_failed(run, ended.exit.clone()).await;
        }
        self.finish(id, index, ended);
        self.pump();
    }

    /// The run of a variant that was not asked to stop, once it is known.
    fn uncancelled_run(&self, id: i64, index: usize) -> Option<i64> {
        let t = self.table();
        let entry = t.launches.get(&id)?;
        let cancelled = entry.stops.get(&index).is_some_and(|s| s.is_cancelled());
        entry.record.variants[index].run_id.filter(|_| !cancelled)
    }

    /// A trainer that died without saying so (killed, crashed, refused at start) leaves its
    /// run `running` until it shows as lost: the run is marked failed with the reason, so its
    /// page says why. A run that already ended keeps its own word.
    pub(super) async fn mark_failed(&self, run: i64, why: String) {
        let store = &self.0.store;
        let status = store.run_row(run).await.map(|r| r.status);
        if matches!(status, Ok(RunStatus::Finished | RunStatus::Failed)) {
            return;
        }
        if let Err(e) = store.set_status(run, RunStatus::Failed, Some(why)).await {
            tracing::warn!(run, "marking a launched run failed: {e:#}");
        }
    }

    async fn find_run(&self, id: i64, index: usize, job: &Job) {
        while !self.note_run(id, index, job).await {
            tokio::time::sleep(FIND_RUN_EVERY).await;
        }
    }

    /// Looks the variant's run up in storage; true once it is known.
    pub(super) async fn note_run(&self, id: i64, index: usize, job: &Job) -> bool {
        if self
            .get(id)
            .is_ok_and(|r| r.variants[index].run_id.is_some())
        {
            return true;
        }
        let found = self.0.store.run_of_variant(&job.group, &job.variant).await;
        match found {
            Ok(Some(run)) => {
                let mut t = self.table();
                if let Some(entry) = t.launches.get_mut(&id) {
                    entry.record.variants[index].run_id = Some(run);
                    self.publish(entry);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(launch = id, "looking for a launched run: {e:#}");
                false
            }
        }
    }

    /// Records how a variant's process ended and frees its slot.
    fn finish(&self, id: i64, index: usize, ended: Ended) {
        let mut t = self.table();
        t.running -= 1;
        let entry = t
            .launches
            .get_mut(&id)
            .expect("a started variant's launch exists");
        let stopped = entry.stops.remove(&index).is_some_and(|s| s.is_cancelled());
        entry.pids.remove(&index);
        let v = &mut entry.record.variants[index];
        v.state = match (stopped, ended.success) {
            (true, _) => VariantState::Cancelled,
            (false, true) => VariantState::Finished,
            (false, false) => VariantState::Failed,
        };
        v.ended_at = Some(now());
        if v.state == VariantState::Failed {
            tracing::warn!(
                launch = id,
                variant = v.name,
                "trainer failed: {}",
                ended.exit
            );
            v.stderr = ended.stderr;
        }
        v.exit = Some(ended.exit);
        self.publish(entry);
        drop(t);
        self.0.exited.notify_waiters();
    }
}

/// Why a trainer failed, for its run's page: how it exited and what it said last (its error
/// with the causes under it, or its last three lines).
pub(super) fn failure(ended: &Ended) -> String {
    let err = &ended.stderr;
    let from = err
        .iter()
        .rposition(|l| l.starts_with("Error:"))
        .unwrap_or(err.len().saturating_sub(3));
    let said: Vec<&str> = err[from..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect();
    match said.is_empty() {
        true => format!("the trainer exited ({})", ended.exit),
        false => format!("the trainer exited ({}): {}", ended.exit, said.join(" — ")),
    }
}

fn queued(name: String) -> LaunchVariant {
    LaunchVariant {
        name,
        state: VariantState::Queued,
        run_id: None,
        started_at: None,
        ended_at: None,
        exit: None,
        stderr: Vec::new(),
        cancelled: false,
        job: None,
        node: None,
        reason: None,
        log: None,
    }
}

/// Marks the entry's queued variants cancelled; whether there were any. A variant that is a
/// SLURM job is left to the poller, which cancels the job and shows it ended once the
/// scheduler says so.
fn cancel_queued(entry: &mut Entry) -> bool {
    let t = now();
    let mut any = false;
    for v in &mut entry.record.variants {
        if v.state == VariantState::Queued && v.job.is_none() {
            v.state = VariantState::Cancelled;
            v.ended_at = Some(t);
            any = true;
        }
    }
    any
}

/// `<grid>-<unix seconds>`, as `keel ablate` names its groups; the launch id is added when a
/// launch of the same grid in the same second has the name already, and always on a database
/// other servers launch on too (their launches are not in this table).
fn unique_group(t: &Table, grid: &str, id: i64, shared: bool) -> String {
    let group = format!("{grid}-{}", now() as u64);
    if shared || t.launches.values().any(|e| e.record.group == group) {
        format!("{group}-{id}")
    } else {
        group
    }
}

fn not_found(id: i64) -> AppError {
    AppError::NotFound(format!("launch {id} not found"))
}
