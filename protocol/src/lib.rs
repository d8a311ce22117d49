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

/// The version of this wire format, sent by a trainer when it creates a run.
pub const PROTOCOL_VERSION: u32 = 1;

/// Layer statistics a keel trainer reports, one value per transformer block.
pub const LAYER_STATS: [&str; 8] = [
    "hidden_var",
    "hidden_rms",
    "act_absmax",
    "attn_logit_max",
    "grad_norm",
    "param_norm",
    "update_ratio",
    "norm_gain",
];

/// Scalars a keel trainer reports every step (plus `loss/<source>` per data source).
pub const SCALARS: [&str; 8] = [
    "loss",
    "lr",
    "grad_norm",
    "grad_clipped",
    "z_loss",
    "tokens_per_s",
    "step_time_s",
    "tokens",
];
