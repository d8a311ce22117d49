//! Runs and the step records a trainer streams into them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Metric;

/// `POST /api/v1/runs`: what a trainer (or a script) says about a new run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The full training config, stored as given and shown on the run page.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Number of transformer blocks: the length of every layer-statistic vector.
    pub layers: u32,
    /// The ablation variant this run belongs to, if it was launched from a grid.
    #[serde(default)]
    pub variant: Option<String>,
    /// The sender's [`crate::PROTOCOL_VERSION`].
    #[serde(default)]
    pub protocol: Option<u32>,
    /// Ranks of a distributed run: the length of every `rank_*` statistic's vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<u32>,
}

/// `201` answer to a run creation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreatedRun {
    pub id: i64,
}

/// The life of a run as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Paused,
    Finished,
    Failed,
    /// The trainer stopped sending heartbeats; back to `running` when it returns.
    Lost,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "lost" => RunStatus::Lost,
            _ => return None,
        })
    }

    /// A finished or failed run takes no more commands.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Finished | RunStatus::Failed)
    }
}

/// One row of `GET /api/v1/runs`. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: i64,
    pub name: String,
    pub group: Option<String>,
    pub variant: Option<String>,
    pub tags: Vec<String>,
    pub status: RunStatus,
    pub layers: u32,
    /// Ranks of a distributed run (the rows of its `rank_*` statistics), or null.
    #[serde(default)]
    pub ranks: Option<u32>,
    /// The branch new steps go to; 0 until the first rewind.
    pub branch: u32,
    pub last_step: Option<u64>,
    pub last_loss: Option<Metric>,
    pub tokens: Option<u64>,
    pub alerts: u64,
    /// Incidents not yet acknowledged.
    #[serde(default)]
    pub open_incidents: u64,
    pub created_at: f64,
    pub updated_at: f64,
}

/// `GET /api/v1/runs/{id}`: the summary plus the config and the series that exist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub config: serde_json::Value,
    pub scalars: Vec<String>,
    pub layer_stats: Vec<String>,
    pub steps: u64,
    /// Every branch of the run's history, oldest first; more than one after a rewind.
    #[serde(default)]
    pub branches: Vec<BranchInfo>,
}

/// One branch of a run's history. Branch 0 has neither `parent` nor `fork_step`; a branch
/// started by a rewind forks from `parent` after `fork_step`, the last step they share
/// (`None` when it shares nothing). The parent's steps after `fork_step` stay stored: the
/// abandoned stretch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchInfo {
    pub branch: u32,
    pub parent: Option<u32>,
    pub fork_step: Option<u64>,
}

/// One training step's measurements. Every layer vector has one value per block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    pub step: u64,
    /// Wall-clock time of the step, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    /// Tokens seen so far, this step included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub scalars: BTreeMap<String, Metric>,
    #[serde(default)]
    pub layers: BTreeMap<String, Vec<Metric>>,
}

impl StepRecord {
    /// A record of `step` with nothing measured yet.
    pub fn at(step: u64) -> StepRecord {
        StepRecord {
            step,
            time: None,
            tokens: None,
            scalars: BTreeMap::new(),
            layers: BTreeMap::new(),
        }
    }
}

/// `POST /api/v1/runs/{id}/steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    /// The history branch these steps belong to; the run's live branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<u32>,
    pub steps: Vec<StepRecord>,
}

/// Answer to an ingest: how many steps were new and how many were already stored
/// (re-sent steps are ignored, so a retry never doubles anything).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestReply {
    pub accepted: u64,
    pub duplicates: u64,
    pub branch: u32,
}

/// `POST /api/v1/runs/{id}/status`: the trainer reports a change in its own state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
