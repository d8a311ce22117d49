//! What the server pushes to live subscribers, and the events it stores.

use serde::{Deserialize, Serialize};

use crate::{CommandRecord, RunStatus, StepRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
