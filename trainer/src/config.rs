//! The training config: one TOML file per run, every stability switch a key.
//!
//! Defaults are YuLan-Mini's final choices (µP init at base width 256, depth-µP residual
//! scaling 1.4/√L, embedding multiplier 10, WeSaR, no QK-norm, z-loss 1e-4, weight decay 0.1,
//! AdamW β = (0.9, 0.95), ε = 1e-15, clip 1.0, peak LR 0.01), so an ablation file only names
//! what it changes. This module parses, merges overrides and validates; it never touches a
//! tensor. Relative data paths are resolved against the directory of the file that names them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use keel_protocol::DecayShape;
use serde::{Deserialize, Serialize};

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
    pub checkpoint: CheckpointConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    pub seed: u64,
    /// Total optimizer steps; `--steps` overrides it.
    pub steps: u64,
    pub batch_size: usize,
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
            log_every: 10,
            tags: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// 256 for the byte-level tokenizer; taken from `tokenizer.json` when one is configured.
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Grouped-query attention: fewer KV heads than query heads. `None` = `n_heads`.
    pub n_kv_heads: Option<usize>,
    pub d_ffn: usize,
    pub seq_len: usize,
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
    pub mup_base_width: usize,
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

/// Read a config file, apply dotted-key overrides (`("optim.lr", 0.003)`), and validate.
pub fn load_config(path: &Path) -> Result<TrainConfig> {
    load_with_overrides(path, &[])
}

pub fn load_with_overrides(
    path: &Path,
    overrides: &[(String, toml::Value)],
) -> Result<TrainConfig> {
    let mut value = read_toml(path)?;
    for (key, v) in overrides {
        set_dotted(&mut value, key, v.clone())?;
    }
    from_value(value, path.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("in config {}", path.display()))
}

pub(crate) fn read_toml(path: &Path) -> Result<toml::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
    Ok(toml::Value::Table(table))
}

/// Deserialise a merged TOML value, resolve relative paths against `base_dir`, validate.
pub(crate) fn from_value(value: toml::Value, base_dir: &Path) -> Result<TrainConfig> {
    let mut cfg: TrainConfig = value.try_into()?;
    for source in &mut cfg.data.sources {
        if let Some(p) = &source.path {
            source.path = Some(resolve(base_dir, p));
        }
    }
    if let Some(t) = &cfg.data.tokenizer {
        cfg.data.tokenizer = Some(resolve(base_dir, t));
    }
    cfg.validate()?;
    Ok(cfg)
}

fn resolve(base_dir: &Path, p: &str) -> String {
    if Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base_dir.join(p).to_string_lossy().into_owned()
    }
}

/// Set `a.b.c = v` inside a TOML table, creating tables on the way.
pub fn set_dotted(root: &mut toml::Value, key: &str, v: toml::Value) -> Result<()> {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let table = node
            .as_table_mut()
            .with_context(|| format!("override {key}: {part} is not a table"))?;
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = node
        .as_table_mut()
        .with_context(|| format!("override {key}: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// Merge `over` into `base`: tables recursively, anything else replaced.
pub fn deep_merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
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
            m.n_heads > 0 && m.d_model % m.n_heads == 0,
            "n_heads must divide d_model"
        );
        ensure!(
            m.head_dim() % 2 == 0,
            "the head dimension must be even for RoPE"
        );
        let kv = m.kv_heads();
        ensure!(
            kv > 0 && m.n_heads % kv == 0,
            "n_kv_heads must divide n_heads"
        );
        ensure!(
            m.seq_len > 0 && m.vocab_size > 0,
            "seq_len and vocab_size must be positive"
        );
        ensure!(m.rope_theta > 0.0, "rope_theta must be positive");
        ensure!(self.run.batch_size > 0, "batch_size must be positive");
        ensure!(
            self.optim.lr > 0.0 && self.optim.eps >= 0.0,
            "lr must be positive"
        );
        ensure!(self.stats.every > 0, "stats.every must be at least 1");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_yulan_minis_final_choices() {
        let cfg = from_value(toml::Value::Table(toml::Table::new()), Path::new(".")).unwrap();
        assert_eq!(cfg.stability.init, InitScheme::Mup);
        assert_eq!(cfg.stability.emb_multiplier, 10.0);
        assert!(cfg.stability.depth_mup && cfg.stability.wesar && !cfg.stability.qk_norm);
        assert_eq!((cfg.optim.beta2, cfg.optim.eps), (0.95, 1e-15));
        assert_eq!((cfg.optim.weight_decay, cfg.optim.grad_clip), (0.1, 1.0));
    }

    #[test]
    fn dotted_overrides_and_deep_merges_reach_nested_keys() {
        let mut v: toml::Value = toml::from_str("[optim]\nlr = 0.01\nbeta1 = 0.8").unwrap();
        set_dotted(&mut v, "optim.lr", toml::Value::Float(0.5)).unwrap();
        deep_merge(&mut v, toml::from_str("stability.init = 'scaled'").unwrap());
        let cfg = from_value(v, Path::new(".")).unwrap();
        assert_eq!((cfg.optim.lr, cfg.optim.beta1), (0.5, 0.8));
        assert_eq!(cfg.stability.init, InitScheme::Scaled);
    }

    #[test]
    fn unknown_keys_and_bad_shapes_are_refused() {
        let bad = [
            "[optim]\nlearning_rate = 1.0",
            "[model]\nd_model = 30\nn_heads = 4",
        ];
        for text in bad {
            let v: toml::Value = toml::from_str(text).unwrap();
            assert!(from_value(v, Path::new(".")).is_err(), "{text}");
        }
    }
}
