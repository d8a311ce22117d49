//! The training config: one TOML file per run, every stability switch a key.
//!
//! Defaults are YuLan-Mini's final choices (µP init at base width 256, depth-µP residual
//! scaling 1.4/√L, embedding multiplier 10, WeSaR, no QK-norm, z-loss 1e-4, weight decay 0.1,
//! AdamW β = (0.9, 0.95), ε = 1e-15, clip 1.0, peak LR 0.01), so an ablation file only names
//! what it changes. This module parses, merges overrides and validates; it never touches a
//! tensor. A config is a file or one of the [`builtin`] ones; relative data paths are resolved
//! against the directory of the file that names them (see [`load`]).

pub mod builtin;
mod load;

pub(crate) use load::{Kind, from_value, read_toml};
pub use load::{deep_merge, load_config, load_with_overrides, set_dotted};

use anyhow::{Result, bail, ensure};
use keel_protocol::DecayShape;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub model: ModelConfig,
    pub stability: StabilityConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub data: DataConfig,
    pub stats: StatsConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    /// The server's alert thresholds and rules for this run (`[alerts]`, `[[alerts.rules]]`),
    /// passed on as the run's `config.alerts`; the trainer itself reads nothing here.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub alerts: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    pub seed: u64,
    /// Total optimizer steps; `--steps` overrides it.
    pub steps: u64,
    pub batch_size: usize,
    /// The precision of the step (master weights and optimizer moments stay f32).
    pub dtype: Precision,
    /// Gradient accumulation: the batch goes through in this many slices of
    /// `batch_size / micro_batches` rows (activations of one slice, the update of the whole).
    pub micro_batches: usize,
    /// Print a progress line every this many steps.
    pub log_every: u64,
    pub tags: Vec<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "proxy".into(),
            seed: 0,
            steps: 1000,
            batch_size: 8,
            dtype: Precision::F32,
            micro_batches: 1,
            log_every: 10,
            tags: Vec::new(),
        }
    }
}

/// What a training step computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// f32 tensors, matrix products in TF32 on a GPU that has it (the CPU computes f32).
    Tf32,
    /// Activations and matrix products in bf16 over f32 master weights and moments; RMSNorm,
    /// the attention softmax, the loss and the statistics in f32.
    Bf16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Taken from `tokenizer.json` when one is configured. With bytes, at least 256: a larger
    /// value keeps a real tokenizer's embedding shape (the ids used stay below 256).
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Grouped-query attention: fewer KV heads than query heads. `None` = `n_heads`.
    pub n_kv_heads: Option<usize>,
    pub d_ffn: usize,
    pub seq_len: usize,
    /// The longest sequence an `anneal` may switch to (YuLan-Mini: 4,096 → 28,672). Absent:
    /// `seq_len`, so the context cannot grow unless the config says how far.
    pub max_seq_len: Option<usize>,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: None,
            d_ffn: 320,
            seq_len: 128,
            max_seq_len: None,
            rope_theta: 10_000.0,
            norm_eps: 1e-6,
        }
    }
}

impl ModelConfig {
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len.unwrap_or(self.seq_len)
    }
}

/// How the weight matrices are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitScheme {
    /// Every matrix N(0, 0.02²), the HF default.
    #[serde(rename = "normal_0.02")]
    Normal002,
    /// σ = √(2/(5d)); output and down projections ÷ √(2L).
    #[serde(rename = "scaled")]
    Scaled,
    /// µP: hidden-matrix variance σ_base²/m with m = d/base width, output and down ÷ 2L more,
    /// and hidden-matrix LR ÷ m (when `optim.mup_lr`).
    #[default]
    #[serde(rename = "mup")]
    Mup,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StabilityConfig {
    pub init: InitScheme,
    /// µP's base width: the width the LR and init were tuned at. A model of width d gets
    /// m = d / base: hidden-matrix init variance ÷ m and (with `optim.mup_lr`) LR ÷ m.
    pub mup_base_width: usize,
    /// Under µP, also divide the output logits by m (Cerebras µP). YuLan-Mini keeps them
    /// unscaled.
    pub mup_logits: bool,
    /// Scale each residual branch by 1.4/√L before it is added (depth-µP).
    pub depth_mup: bool,
    /// The token embedding is multiplied by this before the first block.
    pub emb_multiplier: f64,
    /// WeSaR: every matrix is α·W̃ with a learnable scalar α and W̃ initialised small.
    pub wesar: bool,
    /// The common standard deviation of every W̃ under WeSaR.
    pub wesar_std: f64,
    /// RMSNorm over each head's queries and keys before RoPE.
    pub qk_norm: bool,
    /// Coefficient of the z-loss ζ·mean(logsumexp²); 0 turns it off.
    pub z_loss: f64,
}

impl Default for StabilityConfig {
    fn default() -> Self {
        Self {
            init: InitScheme::Mup,
            mup_base_width: 256,
            mup_logits: false,
            depth_mup: true,
            emb_multiplier: 10.0,
            wesar: true,
            wesar_std: 5e-5,
            qk_norm: false,
            z_loss: 1e-4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak (stable-phase) learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Coupled AdamW decay (PyTorch's form: w ← w − lr·λ·w) on matrices only.
    pub weight_decay: f64,
    /// Also decay the token embedding.
    pub decay_embedding: bool,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f64,
    /// Under µP init, divide the hidden matrices' LR by the width ratio.
    pub mup_lr: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-15,
            weight_decay: 0.1,
            decay_embedding: false,
            grad_clip: 1.0,
            mup_lr: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    pub warmup_steps: u64,
    /// Start the decay at this step; `None` = an open-ended stable phase until `anneal`.
    pub decay_start: Option<u64>,
    pub decay_steps: u64,
    pub decay_shape: DecayShape,
    pub final_lr: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_steps: 100,
            decay_start: None,
            decay_steps: 100,
            decay_shape: DecayShape::OneMinusSqrt,
            final_lr: 0.0,
        }
    }
}

/// Where a data source's text comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Built-in: additions and multiplications with their results (hard: random digits).
    Arithmetic,
    /// Built-in: small programs with nested blocks (medium).
    Code,
    /// Built-in: sentences from a small grammar (easy).
    Prose,
    /// Plain text files: `path` is a file or a glob.
    Text,
    /// JSON lines with a `text` field: `path` is a file or a glob.
    Jsonl,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub path: Option<String>,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A HuggingFace `tokenizer.json`; bytes when absent.
    pub tokenizer: Option<String>,
    pub sources: Vec<SourceConfig>,
    /// For drills and tests: a stretch of batches replaced by random tokens, which gives a
    /// real loss spike (see [`Corrupt`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Corrupt>,
}

/// Batches `from_batch` .. `from_batch + batches` (batch indices: a rewind that skips moves
/// past them) are uniformly random tokens: what a corrupted shard feeds a trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corrupt {
    pub from_batch: u64,
    pub batches: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        let builtin = |name: &str, kind, weight| SourceConfig {
            name: name.into(),
            kind,
            weight,
            path: None,
        };
        Self {
            tokenizer: None,
            sources: vec![
                builtin("prose", SourceKind::Prose, 0.5),
                builtin("code", SourceKind::Code, 0.3),
                builtin("math", SourceKind::Arithmetic, 0.2),
            ],
            corrupt: None,
        }
    }
}

impl DataConfig {
    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.sources
            .iter()
            .map(|s| (s.name.clone(), s.weight))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Collect the per-layer statistics every this many steps (scalars come every step).
    pub every: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { every: 1 }
    }
}

/// Validation: the loss on held-out data of every source, reported as `val/loss/<source>` and
/// their mean `val/loss`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate after every this many steps (0: never).
    pub every: u64,
    /// Batches of held-out rows per source; the same rows at every evaluation.
    pub batches: u64,
    /// The share of each file source's tokens (its end) kept out of training for validation.
    /// Built-in sources are generated: theirs come from a stream of their own.
    pub holdout: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 100,
            batches: 2,
            holdout: 0.02,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Where checkpoints go; `--checkpoint-dir` overrides it. `None`: `checkpoints/<run name>`.
    pub dir: Option<String>,
    /// Save every this many steps (0: only at the end and on command).
    pub every: u64,
    /// Keep this many most recent checkpoints (0: keep all). Rewinds need old ones.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            every: 100,
            keep: 10,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        ensure!(
            m.n_layers > 0 && m.d_model > 0 && m.d_ffn > 0,
            "model sizes must be positive"
        );
        ensure!(
            m.n_heads > 0 && m.d_model.is_multiple_of(m.n_heads),
            "n_heads must divide d_model"
        );
        ensure!(
            m.head_dim().is_multiple_of(2),
            "the head dimension must be even for RoPE"
        );
        let kv = m.kv_heads();
        ensure!(
            kv > 0 && m.n_heads.is_multiple_of(kv),
            "n_kv_heads must divide n_heads"
        );
        ensure!(
            m.seq_len > 0 && m.vocab_size > 0,
            "seq_len and vocab_size must be positive"
        );
        ensure!(
            m.max_seq_len() >= m.seq_len,
            "max_seq_len ({}) must be at least seq_len ({})",
            m.max_seq_len(),
            m.seq_len
        );
        ensure!(m.rope_theta > 0.0, "rope_theta must be positive");
        ensure!(self.run.batch_size > 0, "batch_size must be positive");
        ensure!(
            self.run.micro_batches > 0
                && self.run.batch_size.is_multiple_of(self.run.micro_batches),
            "run.micro_batches ({}) must divide run.batch_size ({})",
            self.run.micro_batches,
            self.run.batch_size
        );
        ensure!(
            self.optim.lr > 0.0 && self.optim.eps >= 0.0,
            "lr must be positive"
        );
        ensure!(self.stats.every > 0, "stats.every must be at least 1");
        ensure!(
            (0.0..0.5).contains(&self.eval.holdout),
            "eval.holdout must be in [0, 0.5), got {}",
            self.eval.holdout
        );
        ensure!(
            self.eval.every == 0 || self.eval.batches > 0,
            "eval.batches must be at least 1 when eval.every is set"
        );
        ensure!(
            self.stability.mup_base_width > 0,
            "mup_base_width must be positive"
        );
        self.validate_data()
    }

    fn validate_data(&self) -> Result<()> {
        ensure!(!self.data.sources.is_empty(), "data.sources is empty");
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.data.sources {
            ensure!(
                seen.insert(&s.name),
                "data source `{}` is named twice",
                s.name
            );
            ensure!(
                s.weight.is_finite() && s.weight >= 0.0,
                "weight of `{}` must be ≥ 0",
                s.name
            );
            let needs_path = matches!(s.kind, SourceKind::Text | SourceKind::Jsonl);
            if needs_path && s.path.is_none() {
                bail!("data source `{}` needs a `path`", s.name);
            }
        }
        ensure!(
            self.data.sources.iter().any(|s| s.weight > 0.0),
            "at least one data source needs a positive weight"
        );
        Ok(())
    }

    /// The config as JSON, for the run page (`RunSpec.config`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
