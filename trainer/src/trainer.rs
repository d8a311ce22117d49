//! One training run in memory: the model, its optimizer, the data mix and the run state, and
//! the one synchronous operation that advances them — [`Trainer::step`].
//!
//! A step samples batch `step + batch_offset`, runs forward and backward, measures the global
//! gradient norm (and, every `stats.every` steps, every per-layer statistic), clips, updates,
//! and returns the step's record. Nothing here touches the network or waits: commands are
//! applied between steps by [`crate::commands`], and the loop with its link lives in
//! [`crate::run`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use keel_protocol::{Metric, StepRecord};

use crate::checkpoint::{self, FORMAT, RunState};
use crate::config::{Precision, TrainConfig};
use crate::data::{self, DataMix};

/// Whether a resume insists on the data files it was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCheck {
    /// Refuse a file whose content changed, went missing or was added.
    Same,
    /// Train on the files as they are now (`--allow-data-change`).
    AllowChange,
}
use crate::model::{self, Model};
use crate::optim::{AdamW, GradScale, clip_factor};
use crate::params::Params;
use crate::schedule::Schedule;
use crate::stats::{self, LayerStats, TapValues};

pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Model,
    pub params: Params,
    pub opt: AdamW,
    pub data: DataMix,
    pub state: RunState,
    pub device: Device,
    pub checkpoint_dir: PathBuf,
    /// Parameter indices per block (and one group outside blocks), for the gradient norms.
    groups: Vec<Vec<usize>>,
    /// Each block's matrices (with their α) and gains, for the weight statistics.
    blocks: stats::BlockWeights,
    /// Clip with a factor computed on the device (no read of the gradient norm before the
    /// update); on by default off the CPU.
    pub clip_on_device: bool,
}

impl Trainer {
    /// A fresh run: weights from the config's seed, step 0.
    pub fn new(cfg: TrainConfig, device: &Device, checkpoint_dir: PathBuf) -> Result<Self> {
        Self::with_dtype(cfg, device, checkpoint_dir, DType::F32)
    }

    pub fn with_dtype(
        mut cfg: TrainConfig,
        device: &Device,
        checkpoint_dir: PathBuf,
        dtype: DType,
    ) -> Result<Self> {
        let data = DataMix::with_holdout(&cfg.data, cfg.run.seed, cfg.eval.holdout)?;
        // The tokenizer decides the vocabulary; the config value only matters for bytes.
        cfg.model.vocab_size = match cfg.data.tokenizer {
            // A tokenizer's vocabulary is its own.
            Some(_) => data.vocab_size(),
            // Bytes fit any vocabulary of at least 256: a config may keep a real tokenizer's
            // size (YuLan-Mini's 99,000) so the model has its shape before one is configured.
            None => cfg.model.vocab_size.max(data.vocab_size()),
        };
        let (mut model, params) =
            Model::new(&cfg.model, &cfg.stability, cfg.run.seed, dtype, device)?;
        match cfg.run.dtype {
            Precision::F32 => {}
            Precision::Tf32 => crate::device::allow_tf32(device),
            Precision::Bf16 => model.set_compute_dtype(DType::BF16),
        }
        let opt = AdamW::new(&cfg.optim, &cfg.stability, &params)?;
        let state = RunState {
            format: FORMAT,
            step: 0,
            tokens: 0,
            run_id: None,
            branch: 0,
            forks: Vec::new(),
            schedule: Schedule::new(cfg.optim.lr, &cfg.schedule),
            data_weights: data.weights(),
            batch_offset: 0,
            seq_len: cfg.model.seq_len,
            rope_theta: cfg.model.rope_theta,
            grad_clip: cfg.optim.grad_clip,
            optimizer_steps: 0,
            data_files: data.files().clone(),
            applied: Default::default(),
            config: cfg.clone(),
        };
        let groups = stats::block_groups(&params, cfg.model.n_layers);
        let blocks = stats::BlockWeights::new(&params, cfg.model.n_layers);
        Ok(Self {
            clip_on_device: !device.is_cpu(),
            groups,
            blocks,
            cfg,
            model,
            params,
            opt,
            data,
            state,
            device: device.clone(),
            checkpoint_dir,
        })
    }

    /// Continue a run from a checkpoint: its config, weights, moments and state. Refused when
    /// a data file changed since the checkpoint (the batches would not be the ones it saw).
    pub fn resume(path: &Path, device: &Device, checkpoint_dir: Option<PathBuf>) -> Result<Self> {
        Self::resume_with(path, device, checkpoint_dir, DataCheck::Same)
    }

    pub fn resume_with(
        path: &Path,
        device: &Device,
        checkpoint_dir: Option<PathBuf>,
        check: DataCheck,
    ) -> Result<Self> {
        let loaded = checkpoint::load(path, device)?;
        let dir = checkpoint_dir
            .or_else(|| path.parent().map(Path::to_path_buf))
            .context("checkpoint path has no parent directory")?;
        let mut t = Self::new(loaded.state.config.clone(), device, dir)?;
        let changes = data::file_changes(&loaded.state.data_files, t.data.files());
        if !changes.is_empty() && check == DataCheck::Same {
            anyhow::bail!(
                "the data changed since this checkpoint, so the run would not see the batches \
                 it was trained on:\n  {}\nresume with --allow-data-change to train on the \
                 new data anyway",
                changes.join("\n  ")
            );
        }
        let now = t.data.files().clone();
        t.restore(loaded)?;
        if !changes.is_empty() {
            tracing::warn!("resuming on changed data: {}", changes.join("; "));
            t.state.data_files = now;
        }
        Ok(t)
    }

    /// Put a checkpoint's tensors and state into this trainer (resume and rewind).
    pub fn restore(&mut self, loaded: checkpoint::Loaded) -> Result<()> {
        for p in &self.params.entries {
            let t = loaded
                .params
                .get(&p.name)
                .with_context(|| format!("checkpoint lacks parameter {}", p.name))?;
            p.var.set(&t.to_dtype(p.var.dtype())?)?;
        }
        self.opt
            .load_state(&loaded.moments, loaded.state.optimizer_steps)?;
        self.data
            .set_weights(&loaded.state.data_weights)
            .map_err(anyhow::Error::msg)?;
        self.model.set_rope_theta(loaded.state.rope_theta);
        self.state = loaded.state;
        Ok(())
    }

    /// Save a checkpoint of the current state and prune old ones.
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        self.save(false)
    }

    /// Save a checkpoint that pruning keeps (an operator asked for it, to come back to it).
    pub fn checkpoint_pinned(&mut self) -> Result<PathBuf> {
        self.save(true)
    }

    fn save(&mut self, pinned: bool) -> Result<PathBuf> {
        self.state.optimizer_steps = self.opt.steps();
        let params: HashMap<String, Tensor> = self
            .params
            .entries
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        let path = checkpoint::save(
            &self.checkpoint_dir,
            &params,
            &self.opt.state_tensors(),
            &self.state,
            pinned,
        )?;
        checkpoint::prune(&self.checkpoint_dir, self.cfg.checkpoint.keep)?;
        Ok(path)
    }

    /// The parameter tensors, in parameter order.
    fn weights(&self) -> Vec<Tensor> {
        self.params
            .entries
            .iter()
            .map(|p| p.var.as_tensor().clone())
            .collect()
    }

    /// Whether the per-layer statistics are collected at `step`.
    fn collects(&self, step: u64) -> bool {
        step.is_multiple_of(self.cfg.stats.every)
    }

    /// Run one training step and return its record.
    ///
    /// With `run.micro_batches` = k the batch goes through in k slices, each forward and
    /// backward on its own with its loss scaled by 1/k and the gradients summed, so the update
    /// is that of the whole batch while the activations are those of one slice; the taps come
    /// from the first slice. Everything the record reports is gathered on the device and read
    /// back in one transfer after the update (on the CPU the gradient norm is read before it,
    /// where that costs nothing).
    pub fn step(&mut self) -> Result<StepRecord> {
        let started = Instant::now();
        let step = self.state.step;
        let collect = self.collects(step);
        let (b, t) = (self.cfg.run.batch_size, self.state.seq_len);
        let k = self.cfg.run.micro_batches.max(1);
        let mb = b / k;
        let batch = self.data.batch(step + self.state.batch_offset, b, t)?;
        let mut grads: Vec<Tensor> = Vec::new();
        let (mut ces, mut zs, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        let mut taps = None;
        for i in 0..k {
            let span = i * mb * t..(i + 1) * mb * t;
            let inputs =
                Tensor::from_vec(batch.inputs[span.clone()].to_vec(), (mb, t), &self.device)?;
            let targets = Tensor::from_vec(batch.targets[span].to_vec(), mb * t, &self.device)?;
            let fwd = self.model.forward(&inputs, collect && i == 0)?;
            let loss = model::loss(&fwd.logits, &targets, self.cfg.stability.z_loss)?;
            let objective = if k == 1 {
                loss.total.clone()
            } else {
                loss.total.affine(1.0 / k as f64, 0.0)?
            };
            let store = objective.backward()?;
            for (j, p) in self.params.entries.iter().enumerate() {
                let g = store
                    .get(p.var.as_tensor())
                    .with_context(|| format!("no gradient for {}", p.name))?
                    .detach();
                if i == 0 {
                    grads.push(g);
                } else {
                    grads[j] = (&grads[j] + g)?;
                }
            }
            ces.push(loss.ce);
            zs.push(loss.z);
            rows.push(loss.per_token.reshape((mb, t))?.mean(1)?);
            if i == 0 {
                taps = fwd.taps;
            }
        }
        let grad_sq = stats::group_sq_norms(&self.groups, &grads)?;
        let grad_sq = Tensor::stack(&grad_sq, 0)?;
        let max_norm = self.state.grad_clip;
        let scale = if self.clip_on_device {
            let norm = grad_sq.sum_all()?.sqrt()?;
            stats::clip_scale(&norm, max_norm)?.map_or(GradScale::Host(1.0), GradScale::Device)
        } else {
            stats::count_host_read();
            let norm = grad_sq
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .sum::<f64>();
            GradScale::Host(clip_factor(norm.sqrt(), max_norm))
        };
        // ‖ΔW‖ needs the effective weights before the update: keep them, one flat copy per
        // block (the parameter norms are taken from the same copy).
        let (before, gains) = if collect {
            let weights = self.weights();
            (
                self.blocks.effective(&weights)?,
                self.blocks.gain_rms(&weights)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let lr = self.state.schedule.lr(step);
        self.opt.step(&self.params, &grads, lr, &scale)?;

        // Everything the record reports, in one transfer.
        let mut out = stats::Transfer::default();
        let loss_slot = out.push_scalars(&[
            Tensor::stack(&ces, 0)?.mean_all()?,
            Tensor::stack(&zs, 0)?.mean_all()?,
        ])?;
        let rows_slot = out.push(&Tensor::cat(&rows, 0)?)?;
        let grad_slot = out.push(&grad_sq)?;
        let scale_slot = match &scale {
            GradScale::Device(s) => Some(out.push(s)?),
            GradScale::Host(_) => None,
        };
        let layer_slots = match taps {
            Some(taps) if collect => {
                let after = self.blocks.effective(&self.weights())?;
                Some((
                    out.push_scalars(&stats::sq_norms(before.iter())?)?,
                    out.push_scalars(&stats::diff_sq_norms(&after, &before)?)?,
                    out.push_scalars(&gains)?,
                    TapValues::push(&taps, &mut out)?,
                ))
            }
            _ => None,
        };
        let host = out.read()?;
        let grad_sq = host.get(grad_slot);
        let grad_norm = grad_sq.iter().sum::<f64>().sqrt();
        let factor = match (&scale, scale_slot) {
            (_, Some(slot)) => host.get(slot)[0],
            (GradScale::Host(f), None) => *f,
            (GradScale::Device(_), None) => unreachable!("a device factor has a slot"),
        };
        let layers = layer_slots.map(|(param, update, gains, taps)| {
            LayerStats::new(
                TapValues::from_host(host.get(taps)),
                grad_sq,
                host.get(param),
                host.get(update),
                host.get(gains).to_vec(),
            )
        });
        self.state.step += 1;
        self.state.tokens += (b * t) as u64;
        let elapsed = started.elapsed().as_secs_f64();
        let mut rec = StepRecord {
            step,
            time: Some(unix_now()),
            tokens: Some(self.state.tokens),
            scalars: Default::default(),
            layers: layers.map(LayerStats::into_map).unwrap_or_default(),
        };
        let clipped = if factor < 1.0 { 1.0 } else { 0.0 };
        let losses = host.get(loss_slot);
        let per_source =
            stats::per_source_loss(host.get(rows_slot), &batch.sources, self.data.names());
        let scalars = [
            ("loss".to_string(), losses[0]),
            ("z_loss".to_string(), losses[1]),
            ("lr".to_string(), lr),
            ("grad_norm".to_string(), grad_norm),
            ("grad_clipped".to_string(), clipped),
            ("step_time_s".to_string(), elapsed),
            ("tokens_per_s".to_string(), (b * t) as f64 / elapsed),
        ];
        for (k, v) in scalars.into_iter().chain(per_source) {
            rec.scalars.insert(k, Metric::new(v));
        }
        let every = self.cfg.eval.every;
        if every > 0 && (step + 1).is_multiple_of(every) {
            for (k, v) in self.evaluate()? {
                rec.scalars.insert(k, Metric::new(v));
            }
        }
        Ok(rec)
    }

    /// The loss on held-out data: `val/loss/<source>` for every source (whatever its weight in
    /// the mix, so a mix change shows on every domain), and `val/loss`, their plain mean, which
    /// a mix change does not move by itself. The same rows every time, at the run's current
    /// sequence length; no gradients, no statistics.
    pub fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        let (b, t) = (self.cfg.run.batch_size, self.state.seq_len);
        let mut out = BTreeMap::new();
        for (s, name) in self.data.names().iter().enumerate() {
            let mut sum = 0.0;
            let mut n = 0u64;
            for index in 0..self.cfg.eval.batches {
                let Some(batch) = self.data.val_batch(s, index, b, t)? else {
                    break;
                };
                let inputs = Tensor::from_vec(batch.inputs, (b, t), &self.device)?;
                let targets = Tensor::from_vec(batch.targets, b * t, &self.device)?;
                let fwd = self.model.forward(&inputs, false)?;
                let loss = model::loss(&fwd.logits, &targets, 0.0)?;
                stats::count_host_read();
                sum += loss.ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                n += 1;
            }
            if n > 0 {
                out.insert(format!("val/loss/{name}"), sum / n as f64);
            }
        }
        if !out.is_empty() {
            let mean = out.values().sum::<f64>() / out.len() as f64;
            out.insert("val/loss".into(), mean);
        }
        Ok(out)
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
