//! The store's one door: a method per thing the server reads or writes. Routes, the
//! watchdog and the launch queue go through these; the pool, the connections and the
//! writer's operations stay inside `storage`, so a second backend changes this module only.

use keel_protocol::{
    Command, CommandOutcome, CommandRecord, EventRecord, Incident, IngestBatch, IngestReply,
    LayerMatrix, RunDetail, RunSpec, ScalarSeries, StepRecord,
};

use super::launches::StoredLaunch;
use super::ops::{NewEvent, WriteOp};
use super::runs::{RunRow, SeriesRow};
use super::series::{Plan, Window};
use super::summary::Summary;
use super::{Cursor, Store, StoreResult, on_backend, postgres, sqlite};
use crate::alerts::Thresholds;

/// Reads.
impl Store {
    /// The person `token` belongs to, if it is a person's.
    pub async fn user_by_token(&self, token: &str) -> StoreResult<Option<super::users::User>> {
        on_backend!(&self.read, db, sql => sql::users::by_token(db, token).await)
    }

    pub async fn users(&self) -> StoreResult<Vec<keel_protocol::UserRecord>> {
        on_backend!(&self.read, db, sql => sql::users::list(db).await)
    }

    /// The browser session of id `id`, if there is one (expired or not).
    pub async fn session(&self, id: &str) -> StoreResult<Option<super::sessions::StoredSession>> {
        on_backend!(&self.read, db, sql => sql::sessions::find(db, id).await)
    }

    pub async fn run_row(&self, id: i64) -> StoreResult<RunRow> {
        on_backend!(&self.read, db, sql => sql::runs::run_row(db, id).await)
    }

    pub async fn run_detail(&self, id: i64) -> StoreResult<RunDetail> {
        on_backend!(&self.read, db, sql => sql::runs::run_detail(db, id).await)
    }

    /// Runs newest first, below `before`, at most `limit`.
    pub async fn list_runs(&self, before: Option<i64>, limit: u32) -> StoreResult<Vec<RunRow>> {
        on_backend!(&self.read, db, sql => sql::runs::list_runs(db, before, limit).await)
    }

    pub async fn count_runs(&self) -> StoreResult<u64> {
        on_backend!(&self.read, db, sql => sql::runs::count_runs(db).await)
    }

    pub async fn group_ids(&self, group: &str) -> StoreResult<Vec<i64>> {
        on_backend!(&self.read, db, sql => sql::runs::group_ids(db, group).await)
    }

    pub async fn series_of(&self, run_id: i64) -> StoreResult<Vec<SeriesRow>> {
        on_backend!(&self.read, db, sql => sql::runs::series_of(db, run_id).await)
    }

    pub async fn thresholds(&self, run_id: i64) -> StoreResult<Thresholds> {
        on_backend!(&self.read, db, sql => sql::runs::thresholds(db, run_id).await)
    }

    pub async fn rules(&self, run_id: i64) -> StoreResult<Vec<keel_protocol::Rule>> {
        on_backend!(&self.read, db, sql => sql::runs::rules(db, run_id).await)
    }

    /// Runs that are `running` but stored no step since `before`: (id, last step, last change).
    pub async fn quiet_running_runs(
        &self,
        before: f64,
    ) -> StoreResult<Vec<(i64, Option<u64>, f64)>> {
        on_backend!(&self.read, db, sql => sql::runs::quiet_running_runs(db, before).await)
    }

    /// Runs `running` or `paused` with no sign of life since `before`.
    pub async fn silent_runs(&self, before: f64) -> StoreResult<Vec<i64>> {
        on_backend!(&self.read, db, sql => sql::runs::silent_runs(db, before).await)
    }

    /// The newest run of `variant` in `group`.
    pub async fn run_of_variant(&self, group: &str, variant: &str) -> StoreResult<Option<i64>> {
        on_backend!(&self.read, db, sql => sql::runs::run_of_variant(db, group, variant).await)
    }

    /// The run's events after id `after`, oldest first, at most `limit`.
    pub async fn events(
        &self,
        run_id: i64,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        on_backend!(&self.read, db, sql => sql::runs::events(db, run_id, after, limit).await)
    }

    pub async fn commands(&self, run_id: i64) -> StoreResult<Vec<CommandRecord>> {
        on_backend!(&self.read, db, sql => sql::runs::commands(db, run_id).await)
    }

    /// Steps that arrived after `seq`: (branch, seq, record), at most `limit`.
    pub async fn steps_since(
        &self,
        run_id: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<(u32, i64, StepRecord)>> {
        on_backend!(&self.read, db, sql => sql::runs::steps_since(db, run_id, seq, limit).await)
    }

    /// Where the run's live stream stands now: its last step arrival and its last event.
    pub async fn cursor(&self, run_id: i64) -> StoreResult<Cursor> {
        on_backend!(&self.read, db, sql => sql::runs::cursor(db, run_id).await)
    }

    pub async fn incidents(&self, run_id: i64, open: bool) -> StoreResult<Vec<Incident>> {
        on_backend!(&self.read, db, sql => sql::incidents::list(db, run_id, open).await)
    }

    pub async fn launches(&self) -> StoreResult<Vec<StoredLaunch>> {
        on_backend!(&self.read, db, sql => sql::launches::load(db).await)
    }

    /// A consistent view for a read of several queries (a large series answer).
    pub async fn snapshot(&self) -> StoreResult<Snapshot> {
        Ok(match &self.read {
            super::Pool::Sqlite(db) => Snapshot::Sqlite(sqlite::series::Snapshot::begin(db).await?),
            super::Pool::Postgres(db) => {
                Snapshot::Postgres(postgres::series::Snapshot::begin(db).await?)
            }
        })
    }

    /// What a series read will cover (see [`Plan`]).
    pub async fn plan(
        &self,
        run: &RunRow,
        layer: bool,
        name: &str,
        window: Window,
    ) -> StoreResult<Plan> {
        on_backend!(&self.read, db, sql => sql::series::plan(db, run, layer, name, window).await)
    }

    pub async fn scalar_series(
        &self,
        run: &RunRow,
        key: &str,
        window: Window,
    ) -> StoreResult<ScalarSeries> {
        on_backend!(&self.read, db, sql => sql::series::scalar_series(db, run, key, window).await)
    }

    pub async fn layer_matrix(
        &self,
        run: &RunRow,
        stat: &str,
        window: Window,
    ) -> StoreResult<LayerMatrix> {
        on_backend!(&self.read, db, sql => sql::series::layer_matrix(db, run, stat, window).await)
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

    /// The next launch id, taken for server `owner`.
    pub async fn reserve_launch(&self, owner: String) -> StoreResult<i64> {
        self.write(|r| WriteOp::ReserveLaunch(owner, r)).await
    }

    pub async fn save_launch(&self, launch: StoredLaunch) -> StoreResult<()> {
        self.write(|r| WriteOp::SaveLaunch(launch, r)).await
    }

    /// Forgets launches that ended before `before`; how many.
    pub async fn prune_launches(&self, before: f64) -> StoreResult<u64> {
        self.write(|r| WriteOp::PruneLaunches(before, r)).await
    }
}

/// One consistent view of the database for reads that span several queries: the chunks of
/// a large answer agree with each other while steps keep arriving.
pub enum Snapshot {
    Sqlite(sqlite::series::Snapshot),
    Postgres(postgres::series::Snapshot),
}

impl Snapshot {
    /// The buckets with data among `plan`'s grid columns `cols`, in step order.
    pub async fn read(
        &mut self,
        plan: &Plan,
        cols: std::ops::Range<u64>,
    ) -> StoreResult<Vec<Summary>> {
        match self {
            Snapshot::Sqlite(s) => s.read(plan, cols).await,
            Snapshot::Postgres(s) => s.read(plan, cols).await,
        }
    }

    /// Every bucket of `plan`, chunk after chunk.
    pub async fn read_every(&mut self, plan: &Plan) -> StoreResult<Vec<Summary>> {
        match self {
            Snapshot::Sqlite(s) => s.read_every(plan).await,
            Snapshot::Postgres(s) => s.read_every(plan).await,
        }
    }
}
