//! Checkpoints on disk: `<dir>/step-00000150/` (branch 0) or `<dir>/step-00000150-b2/` (the
//! history branch a rewind started) holds `model.safetensors` (parameters by name),
//! `optim.safetensors` (AdamW moments `m.<name>`, `v.<name>`) and `state.json` (the
//! [`RunState`]: step, schedule, data position, branch, run id, applied commands, config).
//!
//! A checkpoint named `step-N` was taken after N completed updates: resuming from it runs step
//! N next. It is written to a temporary directory and renamed into place, so a crash never
//! leaves a half-written checkpoint under a real name. This module does file layout only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use keel_protocol::CommandStatus;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::schedule::Schedule;

/// Bumped when the layout or the sidecar changes incompatibly.
pub const FORMAT: u32 = 1;

/// What a command did, kept so a re-delivered command is answered, not re-applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppliedCommand {
    pub status: CommandStatus,
    pub step: u64,
    pub message: Option<String>,
}

/// Everything besides tensors that a resume needs. Operator changes (LR level, decay, mix,
/// sequence length, RoPE θ, clip) live here, not in the config, so they survive a resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// Completed updates; the next step to run.
    pub step: u64,
    pub tokens: u64,
    pub run_id: Option<i64>,
    /// The history branch steps are recorded on; +1 at every rewind.
    pub branch: u32,
    /// Every rewind so far: (the branch it started, the step it went back to), oldest first.
    /// A checkpoint of an older branch at a step past a later rewind's step was abandoned.
    #[serde(default)]
    pub forks: Vec<(u32, u64)>,
    pub schedule: Schedule,
    pub data_weights: BTreeMap<String, f64>,
    /// Batch index = step + batch_offset (a rewind that skips K batches adds K).
    pub batch_offset: u64,
    pub seq_len: usize,
    /// How the attention runs at `seq_len` (streaming once a context was too long for the
    /// batched scores).
    #[serde(default)]
    pub attention: crate::ops::Attention,
    pub rope_theta: f64,
    pub grad_clip: f64,
    pub optimizer_steps: u64,
    /// The data and tokenizer files the run reads, with the SHA-256 of each.
    #[serde(default)]
    pub data_files: BTreeMap<String, String>,
    pub applied: BTreeMap<i64, AppliedCommand>,
    pub config: TrainConfig,
}

/// The tensors and state read back from a checkpoint.
pub struct Loaded {
    pub params: HashMap<String, Tensor>,
    pub moments: HashMap<String, Tensor>,
    pub state: RunState,
}

/// Where the checkpoint after `step` updates on `branch` goes. The branch is in the name, so a
/// branch that passes a step again never overwrites the abandoned branch's checkpoint of it.
pub fn path_for(dir: &Path, step: u64, branch: u32) -> PathBuf {
    match branch {
        0 => dir.join(format!("step-{step:08}")),
        b => dir.join(format!("step-{step:08}-b{b}")),
    }
}

/// A checkpoint found on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub step: u64,
    pub branch: u32,
    pub path: PathBuf,
}

/// Marks a checkpoint an operator asked for: pruning never deletes it.
const PINNED: &str = "pinned";

/// Write one checkpoint atomically; replaces an older one of the same step (a rewind's
/// new branch passes the same step numbers again). `pinned` ones survive pruning.
pub fn save(
    dir: &Path,
    params: &HashMap<String, Tensor>,
    moments: &HashMap<String, Tensor>,
    state: &RunState,
    pinned: bool,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = path_for(dir, state.step, state.branch);
    let tmp = dir.join(format!(".tmp-step-{:08}-b{}", state.step, state.branch));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    candle_core::safetensors::save(params, tmp.join("model.safetensors"))?;
    candle_core::safetensors::save(moments, tmp.join("optim.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    if pinned {
        std::fs::write(tmp.join(PINNED), b"taken on an operator's command\n")?;
    }
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&tmp, &target)
        .with_context(|| format!("moving checkpoint into {}", target.display()))?;
    Ok(target)
}

/// Read a checkpoint directory (or its `state.json`) onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let read = |name: &str| -> Result<HashMap<String, Tensor>> {
        candle_core::safetensors::load(dir.join(name), device)
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let state_path = dir.join("state.json");
    let bytes =
        std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state: RunState = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing {}", state_path.display()))?;
    anyhow::ensure!(
        state.format == FORMAT,
        "checkpoint format {} is not {FORMAT}",
        state.format
    );
    Ok(Loaded {
        params: read("model.safetensors")?,
        moments: read("optim.safetensors")?,
        state,
    })
}

/// The checkpoints in `dir`, oldest step first (and, at one step, oldest branch first).
pub fn list(dir: &Path) -> Vec<Saved> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Saved> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("step-")?;
            let (step, named_branch) = match rest.split_once("-b") {
                Some((s, b)) => (s.parse().ok()?, Some(b.parse().ok()?)),
                None => (rest.parse().ok()?, None),
            };
            let path = e.path();
            if !path.join("state.json").exists() {
                return None;
            }
            // Checkpoints written before branches were in the name say it in their state.
            let branch = named_branch.or_else(|| branch_of(&path)).unwrap_or(0);
            Some(Saved { step, branch, path })
        })
        .collect();
    out.sort_by_key(|c| (c.step, c.branch));
    out
}

/// The branch a checkpoint was written on, from its state.
fn branch_of(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path.join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["branch"].as_u64().map(|b| b as u32)
}

/// Delete all but the `keep` newest unpinned checkpoints (0 keeps everything).
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all: Vec<_> = list(dir)
        .into_iter()
        .filter(|c| !c.path.join(PINNED).exists())
        .collect();
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for c in &all[..all.len() - keep] {
        std::fs::remove_dir_all(&c.path)
            .with_context(|| format!("pruning {}", c.path.display()))?;
    }
    Ok(())
}
