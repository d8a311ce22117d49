//! The store's one door: a method per thing the server reads or writes. Routes, the
//! watchdog and the launch queue go through these; the pool, the connections and the
//! writer's operations stay inside `storage`, so a second backend changes this module only.

use keel_protocol::{
    Command, CommandOutcome, CommandRecord, EventRecord, Incident, IngestBatch, IngestReply,
    LayerMatrix, RunDetail, RunSpec, ScalarSeries, StepRecord,
};

use super::launches::StoredLaunch;
use super::runs::{self, RunRow, SeriesRow};
use super::series::{self, Plan, Snapshot, Window};
use super::writer::{NewEvent, WriteOp};
use super::{Cursor, Store, StoreResult, incidents};
use crate::alerts::Thresholds;

/// Reads.
impl Store {
    /// The person `token` belongs to, if it is a person's.
    pub async fn user_by_token(&self, token: &str) -> StoreResult<Option<super::users::User>> {
        super::users::by_token(&self.read, token).await
    }

    pub async fn users(&self) -> StoreResult<Vec<keel_protocol::UserRecord>> {
        super::users::list(&self.read).await
    }

    /// The browser session of id `id`, if there is one (expired or not).
    pub async fn session(&self, id: &str) -> StoreResult<Option<super::sessions::StoredSession>> {
        super::sessions::find(&self.read, id).await
    }

    pub async fn run_row(&self, id: i64) -> StoreResult<RunRow> {
        runs::run_row(&self.read, id).await
    }

    pub async fn run_detail(&self, id: i64) -> StoreResult<RunDetail> {
        runs::run_detail(&self.read, id).await
    }

    /// Runs newest first, below `before`, at most `limit`.
    pub async fn list_runs(&self, before: Option<i64>, limit: u32) -> StoreResult<Vec<RunRow>> {
        runs::list_runs(&self.read, before, limit).await
    }

    pub async fn count_runs(&self) -> StoreResult<u64> {
        runs::count_runs(&self.read).await
    }

    pub async fn group_ids(&self, group: &str) -> StoreResult<Vec<i64>> {
        runs::group_ids(&self.read, group).await
    }

    pub async fn series_of(&self, run_id: i64) -> StoreResult<Vec<SeriesRow>> {
        runs::series_of(&self.read, run_id).await
    }

    pub async fn thresholds(&self, run_id: i64) -> StoreResult<Thresholds> {
        runs::thresholds(&self.read, run_id).await
    }

    pub async fn rules(&self, run_id: i64) -> StoreResult<Vec<keel_protocol::Rule>> {
        runs::rules(&self.read, run_id).await
    }

    /// Runs that are `running` but stored no step since `before`: (id, last step, last change).
    pub async fn quiet_running_runs(
        &self,
        before: f64,
    ) -> StoreResult<Vec<(i64, Option<u64>, f64)>> {
        runs::quiet_running_runs(&self.read, before).await
    }

    /// Runs `running` or `paused` with no sign of life since `before`.
    pub async fn silent_runs(&self, before: f64) -> StoreResult<Vec<i64>> {
        runs::silent_runs(&self.read, before).await
    }

    /// The newest run of `variant` in `group`.
    pub async fn run_of_variant(&self, group: &str, variant: &str) -> StoreResult<Option<i64>> {
        runs::run_of_variant(&self.read, group, variant).await
    }

    /// The run's events after id `after`, oldest first, at most `limit`.
    pub async fn events(
        &self,
        run_id: i64,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        runs::events(&self.read, run_id, after, limit).await
    }

    pub async fn commands(&self, run_id: i64) -> StoreResult<Vec<CommandRecord>> {
        runs::commands(&self.read, run_id).await
    }

    /// Steps that arrived after `seq`: (branch, seq, record), at most `limit`.
    pub async fn steps_since(
        &self,
        run_id: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<(u32, i64, StepRecord)>> {
        runs::steps_since(&self.read, run_id, seq, limit).await
    }

    /// Where the run's live stream stands now: its last step arrival and its last event.
    pub async fn cursor(&self, run_id: i64) -> StoreResult<Cursor> {
        runs::cursor(&self.read, run_id).await
    }

    pub async fn incidents(&self, run_id: i64, open: bool) -> StoreResult<Vec<Incident>> {
        incidents::list(&self.read, run_id, open).await
    }

    pub async fn launches(&self) -> StoreResult<Vec<StoredLaunch>> {
        super::launches::load(&self.read).await
    }

    /// A consistent view for a read of several queries (a large series answer).
    pub async fn snapshot(&self) -> StoreResult<Snapshot> {
        Snapshot::begin(&self.read).await
    }

    /// What a series read will cover (see [`Plan`]).
    pub async fn plan(
        &self,
        run: &RunRow,
        layer: bool,
        name: &str,
        window: Window,
    ) -> StoreResult<Plan> {
        Plan::new(&self.read, run, layer, name, window).await
    }

    pub async fn scalar_series(
        &self,
        run: &RunRow,
        key: &str,
        window: Window,
    ) -> StoreResult<ScalarSeries> {
        series::scalar_series(&self.read, run, key, window).await
    }

    pub async fn layer_matrix(
        &self,
        run: &RunRow,
        stat: &str,
        window: Window,
    ) -> StoreResult<LayerMatrix> {
        series::layer_matrix(&self.read, run, stat, window).await
    }
}

/// Writes, each committed by the writer task before it answers.
impl Store {
    /// A new run, created by `by` (who the audit log names).
    pub async fn open_session(
        &self,
        id: String,
        session: super::sessions::StoredSession,
    ) -> StoreResult<()> {
        self.write(|r| WriteOp::OpenSession(id, session, r)).await
    }

    pub async fn close_session(&self, id: String) -> StoreResult<()> {
        self.write(|r| WriteOp::CloseSession(id, r)).await
    }

    /// A new person: their record and their token (shown once, stored as its hash).
    pub async fn add_user(
        &self,
        name: String,
        role: keel_protocol::Role,
    ) -> StoreResult<(keel_protocol::UserRecord, String)> {
        self.write(|r| WriteOp::AddUser(name, role, r)).await
    }

    pub async fn set_role(
        &self,
        name: String,
        role: keel_protocol::Role,
    ) -> StoreResult<keel_protocol::UserRecord> {
        self.write(|r| WriteOp::SetRole(name, role, r)).await
    }

    pub async fn remove_user(&self, name: String) -> StoreResult<()> {
        self.write(|r| WriteOp::RemoveUser(name, r)).await
    }

    pub async fn create_run(&self, spec: RunSpec, by: String) -> StoreResult<i64> {
        self.write(|r| WriteOp::CreateRun(spec, by, r)).await
    }

    pub async fn ingest(&self, run_id: i64, batch: IngestBatch) -> StoreResult<IngestReply> {
        self.write(|r| WriteOp::Ingest(run_id, batch, r)).await
    }

    pub async fn add_event(&self, event: NewEvent) -> StoreResult<EventRecord> {
        self.write(|r| WriteOp::AddEvent(event, r)).await
    }

    pub async fn add_command(
        &self,
        run_id: i64,
        command: Command,
        issued_by: String,
    ) -> StoreResult<CommandRecord> {
        self.write(|reply| WriteOp::AddCommand {
            run_id,
            command,
            issued_by,
            reply,
        })
        .await
    }

    /// Marks queued commands delivered; every command not yet applied or rejected.
    pub async fn take_commands(&self, run_id: i64) -> StoreResult<Vec<CommandRecord>> {
        self.write(|r| WriteOp::TakeCommands(run_id, r)).await
    }

    pub async fn outcome(
        &self,
        run_id: i64,
        command_id: i64,
        outcome: CommandOutcome,
    ) -> StoreResult<CommandRecord> {
        self.write(|r| WriteOp::Outcome(run_id, command_id, outcome, r))
            .await
    }

    pub async fn set_rules(
        &self,
        run_id: i64,
        rules: Vec<keel_protocol::Rule>,
        by: String,
    ) -> StoreResult<()> {
        self.write(|r| WriteOp::SetRules(run_id, rules, by, r))
            .await
    }

    pub async fn set_thresholds(
        &self,
        run_id: i64,
        thresholds: Thresholds,
        by: String,
    ) -> StoreResult<()> {
        self.write(|r| WriteOp::SetThresholds(run_id, thresholds, by, r))
            .await
    }

    pub async fn ack_incident(
        &self,
        run_id: i64,
        incident: i64,
        by: String,
    ) -> StoreResult<Incident> {
        self.write(|r| WriteOp::AckIncident(run_id, incident, by, r))
            .await
    }

    pub async fn save_launch(&self, launch: StoredLaunch) -> StoreResult<()> {
        self.write(|r| WriteOp::SaveLaunch(launch, r)).await
    }

    /// Forgets launches that ended before `before`; how many.
    pub async fn prune_launches(&self, before: f64) -> StoreResult<u64> {
        self.write(|r| WriteOp::PruneLaunches(before, r)).await
    }
}
