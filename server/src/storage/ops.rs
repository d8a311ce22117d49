//! The writes the store takes, as the writer task receives them: one per [`Store`] write
//! method, each with the channel its committed result goes back on.
//!
//! [`Store`]: super::Store

use keel_protocol::{
    CommandOutcome, CommandRecord, EventRecord, IngestBatch, IngestReply, RunSpec, RunStatus,
    Severity,
};
use tokio::sync::oneshot;

use super::StoreResult;
use crate::alerts::Thresholds;

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

pub type Reply<T> = oneshot::Sender<StoreResult<T>>;

pub enum WriteOp {
    CreateRun(RunSpec, String, Reply<i64>),
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
    /// Takes the database's next launch id for a server.
    ReserveLaunch(String, Reply<i64>),
    /// Writes a launch's record as it now stands.
    SaveLaunch(super::launches::StoredLaunch, Reply<()>),
    /// Forgets launches that ended before the time given; answers how many.
    PruneLaunches(f64, Reply<u64>),
    /// Stores a new browser session (by its id, which is hashed) and forgets expired ones.
    OpenSession(String, super::sessions::StoredSession, Reply<()>),
    /// Ends a session.
    CloseSession(String, Reply<()>),
    /// Adds a person: their record and token.
    AddUser(
        String,
        keel_protocol::Role,
        Reply<(keel_protocol::UserRecord, String)>,
    ),
    SetRole(
        String,
        keel_protocol::Role,
        Reply<keel_protocol::UserRecord>,
    ),
    /// Removes a person and their sessions.
    RemoveUser(String, Reply<()>),
}
