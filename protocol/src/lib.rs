//! Wire types shared by the keel server and the keel trainer: serde only, no I/O.
//!
//! Everything that crosses HTTP between a trainer, the server and the browser is defined
//! here, so that a change to the wire shows up in one place (and in the golden fixtures under
//! `tests/fixtures`). New fields are `Option` with `#[serde(default)]` so older peers keep
//! working.
//!
//! - [`metric`]: [`Metric`], an `f64` whose NaN and ±Inf travel as JSON strings.
//! - [`runs`]: run specs, run listings, step records and ingest replies.
//! - [`commands`]: operator commands, their validation and their lifecycle.
//! - [`series`]: the columnar answers of the scalar and layer queries.
//! - [`live`]: what the server pushes to subscribers (SSE) and stores as events.
//! - [`launches`]: ablation grids the server launches, and the states of their variants.

pub mod commands;
pub mod launches;
pub mod live;
pub mod metric;
pub mod runs;
pub mod series;
pub mod users;

pub use commands::{
    Command, CommandOutcome, CommandRecord, CommandStatus, DecayShape, Rule, Rules,
};
pub use launches::{
    GridInfo, LaunchRecord, LaunchRequest, LaunchVariant, MAX_LAUNCH_STEPS, VariantState,
};
pub use live::{EventRecord, Incident, LiveMessage, Severity};
pub use metric::Metric;
pub use runs::{
    BranchInfo, CreatedRun, IngestBatch, IngestReply, RunDetail, RunSpec, RunStatus, RunSummary,
    StatusReport, StepRecord,
};
pub use series::{LayerMatrix, ScalarSeries};
pub use users::{Role, UserRecord};

/// The version of this wire format, sent by a trainer when it creates a run.
pub const PROTOCOL_VERSION: u32 = 1;

/// The names of the series keel's trainer writes and the server's alerts and pages read: one
/// spelling for both sides, so renaming a statistic cannot switch its alert off unseen.
pub mod names {
    /// Layer statistics, one value per transformer block.
    pub const HIDDEN_VAR: &str = "hidden_var";
    pub const HIDDEN_RMS: &str = "hidden_rms";
    pub const ACT_ABSMAX: &str = "act_absmax";
    pub const ATTN_LOGIT_MAX: &str = "attn_logit_max";
    /// Both a layer statistic (per block) and a scalar (global, before clipping).
    pub const GRAD_NORM: &str = "grad_norm";
    pub const PARAM_NORM: &str = "param_norm";
    pub const UPDATE_RATIO: &str = "update_ratio";
    pub const NORM_GAIN: &str = "norm_gain";
    /// Statistics named with this prefix have one value per rank of a distributed run
    /// (`rank_step_time_s`, `rank_tokens_per_s`), not one per block.
    pub const RANK_PREFIX: &str = "rank_";
    /// Scalars.
    pub const LOSS: &str = "loss";
    pub const LR: &str = "lr";
    pub const GRAD_CLIPPED: &str = "grad_clipped";
    pub const Z_LOSS: &str = "z_loss";
    pub const TOKENS_PER_S: &str = "tokens_per_s";
    pub const STEP_TIME_S: &str = "step_time_s";
    pub const TOKENS: &str = "tokens";
    /// The mean validation loss over the sources (`val/loss/<source>` per source).
    pub const VAL_LOSS: &str = "val/loss";
}

/// Layer statistics a keel trainer reports, one value per transformer block.
pub const LAYER_STATS: [&str; 8] = [
    names::HIDDEN_VAR,
    names::HIDDEN_RMS,
    names::ACT_ABSMAX,
    names::ATTN_LOGIT_MAX,
    names::GRAD_NORM,
    names::PARAM_NORM,
    names::UPDATE_RATIO,
    names::NORM_GAIN,
];

/// Scalars a keel trainer reports every step (plus `loss/<source>` per data source).
pub const SCALARS: [&str; 8] = [
    names::LOSS,
    names::LR,
    names::GRAD_NORM,
    names::GRAD_CLIPPED,
    names::Z_LOSS,
    names::TOKENS_PER_S,
    names::STEP_TIME_S,
    names::TOKENS,
];
