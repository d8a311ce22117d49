//! Ablation grids launched by the server: what a browser asks for and what it is told.
//!
//! A launch is one grid started once: every variant becomes a trainer process, run in the
//! server's queue or as a SLURM job. A variant is `queued` until a trainer slot is free (or
//! while its job is pending, with the scheduler's reason), `running` while its process lives
//! (with the run it created, once the server has seen it), then `finished`, `failed` (the
//! process exited with an error, or the scheduler refused the job) or `cancelled` (an operator
//! or the server's shutdown stopped it, or it never started).

use serde::{Deserialize, Serialize};

/// The most steps a launch may ask each variant to train.
pub const MAX_LAUNCH_STEPS: u64 = 10_000_000;

/// `GET /api/v1/grids`: one grid file of the server's grids folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridInfo {
    /// The file stem, which is how a launch names it: `stability` for `stability.toml`.
    pub name: String,
    /// The variants, in the order they are launched; empty when the grid does not load.
    pub variants: Vec<String>,
    /// Why the grid does not load, when it does not.
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /api/v1/launches`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// A grid's name (see [`GridInfo::name`]).
    pub grid: String,
    /// Train each variant until this step; the grid's own count when absent.
    #[serde(default)]
    pub steps: Option<u64>,
}

impl LaunchRequest {
    /// What the server can refuse without looking at the grids: the step count.
    pub fn validate(&self) -> Result<(), String> {
        match self.steps {
            Some(n) if !(1..=MAX_LAUNCH_STEPS).contains(&n) => Err(format!(
                "`steps` must be between 1 and {MAX_LAUNCH_STEPS}, not {n}"
            )),
            _ => Ok(()),
        }
    }
}

/// Where one variant of a launch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantState {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl VariantState {
    /// Queued and running variants can still change; the others are over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            VariantState::Finished | VariantState::Failed | VariantState::Cancelled
        )
    }
}

/// One variant of a launch: one trainer process, one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchVariant {
    pub name: String,
    pub state: VariantState,
    /// The run the trainer created, once the server has seen it.
    pub run_id: Option<i64>,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// How the process ended: `exit code 0`, `exit code 1`, `killed by signal 9`.
    pub exit: Option<String>,
    /// The last lines the trainer wrote to stderr, kept when it failed.
    #[serde(default)]
    pub stderr: Vec<String>,
    /// Whether an operator asked to cancel this variant alone (the launch's own `cancelled`
    /// covers all of them).
    #[serde(default)]
    pub cancelled: bool,
    /// The scheduler's job id, when the variant runs as a SLURM job.
    #[serde(default)]
    pub job: Option<String>,
    /// The node the job runs on, once it has started.
    #[serde(default)]
    pub node: Option<String>,
    /// The scheduler's word on a queued job (why it waits: `Resources`, `Priority`) or an
    /// ended one (`NonZeroExitCode`, `TimeLimit`).
    #[serde(default)]
    pub reason: Option<String>,
    /// The job's output file (its stdout and stderr), on the cluster's filesystem.
    #[serde(default)]
    pub log: Option<String>,
}

/// `GET /api/v1/launches/{id}`: a grid launched once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub id: i64,
    pub grid: String,
    /// The group every run of the launch is created in: `<grid>-<unix seconds>`.
    pub group: String,
    pub steps: Option<u64>,
    /// Who launched it: `token` or `browser`.
    pub issued_by: String,
    pub created_at: f64,
    /// Whether an operator asked to cancel it.
    pub cancelled: bool,
    /// Whether a variant is still queued or running.
    pub active: bool,
    pub variants: Vec<LaunchVariant>,
}
