//! What the server pushes to live subscribers, and the events it stores.

use serde::{Deserialize, Serialize};

use crate::{CommandRecord, RunStatus, StepRecord};

/// Ordered: info < warning < critical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// An alert or another notable moment of a run (`GET /api/v1/runs/{id}/events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub run_id: i64,
    /// `alert`, `command` or `status`.
    pub kind: String,
    /// What happened: `non_finite_loss`, `loss_spike`, `depth_growth`, `paused`, …
    pub name: String,
    pub severity: Severity,
    pub step: Option<u64>,
    pub message: String,
    pub time: f64,
}

/// Consecutive alerts of one kind on one run, as one thing to look at
/// (`GET /api/v1/runs/{id}/incidents`): from its first alert to its last, with the worst.
/// It is open until a signed-in operator acknowledges it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub run_id: i64,
    /// The alert's name: `loss_spike`, `depth_growth`, …
    pub name: String,
    /// The worst severity of its alerts.
    pub severity: Severity,
    pub start_step: u64,
    /// The step of its largest alert, and what that alert said.
    pub peak_step: u64,
    pub peak_message: String,
    pub end_step: u64,
    /// How many alerts it gathers.
    pub alerts: u64,
    pub opened_at: f64,
    pub updated_at: f64,
    /// Who acknowledged it, and when; `null` while it is open.
    pub acked_by: Option<String>,
    pub acked_at: Option<f64>,
}

/// One Server-Sent Event of `GET /api/v1/runs/{id}/live`; the SSE event name is the tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveMessage {
    /// Newly stored steps of one branch.
    Steps {
        branch: u32,
        steps: Vec<StepRecord>,
    },
    Event {
        event: EventRecord,
    },
    Command {
        command: CommandRecord,
    },
    Status {
        status: RunStatus,
        branch: u32,
    },
    /// The subscriber fell behind and missed messages: refetch what is shown.
    Resync,
}
