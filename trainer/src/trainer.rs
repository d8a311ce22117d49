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
use keel_protocol::{Metric, StepRecord, names};

use crate::checkpoint::{self, FORMAT, RunState};
use crate::config::{Precision, TrainConfig};
use crate::data::{self, DataMix};

/// One step's forward and backward passes: the summed gradients in parameter order, and per
/// slice the mean cross-entropy, the z-loss term and each row's mean loss.
#[derive(Default)]
struct Pass {
    grads: Vec<Tensor>,
    ce: Vec<Tensor>,
    z: Vec<Tensor>,
    rows: Vec<Tensor>,
    taps: Option<Vec<crate::model::BlockTaps>>,
}

/// What [`Trainer::read_back`] brought to the host.
struct Readings {
    loss: f64,
    z_loss: f64,
    row_loss: Vec<f64>,
    grad_norm: f64,
    clip_factor: f64,
    layers: Option<LayerStats>,
}

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
            attention: Default::default(),
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
        // A checkpoint of an older keel records no hashes: there is nothing to compare, and
        // the run records them from now on.
        let unrecorded = loaded.state.data_files.is_empty() && !t.data.files().is_empty();
        let changes = if unrecorded {
            tracing::warn!("this checkpoint records no data-file hashes; the data is not checked");
            Vec::new()
        } else {
            data::file_changes(&loaded.state.data_files, t.data.files())
        };
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
        }
        if !changes.is_empty() || unrecorded {
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
        self.model.set_attention(loaded.state.attention);
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
        let batch = self.data.batch(step + self.state.batch_offset, b, t)?;
        let pass = self.forward_backward(&batch, collect)?;
        let grad_sq = Tensor::stack(&stats::group_sq_norms(&self.groups, &pass.grads)?, 0)?;
        let scale = self.clip_scale(&grad_sq)?;
        // ‖ΔW‖ needs the effective weights before the update: keep them, one flat copy per
        // block (the parameter norms are taken from the same copy).
        let (before, gains) = if collect {
            let weights = self.weights();
            (
                self.blocks.effective(&weights)?,
                self.blocks.gain_rms(&weights)?,
            )
        } else {
            Default::default()
        };
        let lr = self.state.schedule.lr(step);
        self.opt.step(&self.params, &pass.grads, lr, &scale)?;

        let r = self.read_back(pass, &grad_sq, &scale, collect.then_some((before, gains)))?;
        self.state.step += 1;
        self.state.tokens += (b * t) as u64;
        let elapsed = started.elapsed().as_secs_f64();
        let mut rec = StepRecord {
            step,
            time: Some(unix_now()),
            tokens: Some(self.state.tokens),
            scalars: Default::default(),
            layers: r.layers.map(LayerStats::into_map).unwrap_or_default(),
        };
        let clipped = if r.clip_factor < 1.0 { 1.0 } else { 0.0 };
        let per_source = stats::per_source_loss(&r.row_loss, &batch.sources, self.data.names());
        let scalars = [
            (names::LOSS.to_string(), r.loss),
            (names::Z_LOSS.to_string(), r.z_loss),
            (names::LR.to_string(), lr),
            (names::GRAD_NORM.to_string(), r.grad_norm),
            (names::GRAD_CLIPPED.to_string(), clipped),
            (names::STEP_TIME_S.to_string(), elapsed),
            (names::TOKENS_PER_S.to_string(), (b * t) as f64 / elapsed),
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

    /// Everything a step reports, gathered on the device and read back in one transfer after
    /// the update: the losses, the gradient norms, the clip factor where the device decided
    /// it, and with `weights` (the effective matrices and the gains' RMS before the update)
    /// the per-layer statistics.
    fn read_back(
        &self,
        pass: Pass,
        grad_sq: &Tensor,
        scale: &GradScale,
        weights: Option<(Vec<Tensor>, Vec<Tensor>)>,
    ) -> Result<Readings> {
        let mut out = stats::Transfer::default();
        let loss_slot = out.push_scalars(&[
            Tensor::stack(&pass.ce, 0)?.mean_all()?,
            Tensor::stack(&pass.z, 0)?.mean_all()?,
        ])?;
        let rows_slot = out.push(&Tensor::cat(&pass.rows, 0)?)?;
        let grad_slot = out.push(grad_sq)?;
        let scale_slot = match scale {
            GradScale::Device(s) => Some(out.push(s)?),
            GradScale::Host(_) => None,
        };
        let layer_slots = match (pass.taps, weights) {
            (Some(taps), Some((before, gains))) => {
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
        let clip_factor = match (scale, scale_slot) {
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
        let losses = host.get(loss_slot);
        Ok(Readings {
            loss: losses[0],
            z_loss: losses[1],
            row_loss: host.get(rows_slot).to_vec(),
            grad_norm: grad_sq.iter().sum::<f64>().sqrt(),
            clip_factor,
            layers,
        })
    }

    /// Forward and backward over the batch, in `run.micro_batches` slices: each slice's loss
    /// is scaled by 1/k and the gradients (in parameter order) summed. The taps are the first
    /// slice's.
    fn forward_backward(&self, batch: &crate::data::Batch, collect: bool) -> Result<Pass> {
        let t = batch.seq_len;
        let k = self.cfg.run.micro_batches.max(1);
        let mb = batch.batch_size / k;
        let mut pass = Pass::default();
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
                    pass.grads.push(g);
                } else {
                    pass.grads[j] = (&pass.grads[j] + g)?;
                }
            }
            pass.ce.push(loss.ce);
            pass.z.push(loss.z);
            pass.rows.push(loss.per_token.reshape((mb, t))?.mean(1)?);
            if i == 0 {
                pass.taps = fwd.taps;
            }
        }
        Ok(pass)
    }

    /// The clip factor for gradients whose groups' squared norms are `grad_sq`: on the device
    /// (no read before the update) unless the trainer runs on the CPU.
    fn clip_scale(&self, grad_sq: &Tensor) -> Result<GradScale> {
        let max_norm = self.state.grad_clip;
        if self.clip_on_device {
            let norm = grad_sq.sum_all()?.sqrt()?;
            let scale = stats::clip_scale(&norm, max_norm)?;
            return Ok(scale.map_or(GradScale::Host(1.0), GradScale::Device));
        }
        stats::count_host_read();
        let sq = grad_sq.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let norm = sq.iter().sum::<f64>().sqrt();
        Ok(GradScale::Host(clip_factor(norm, max_norm)))
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
            out.insert(names::VAL_LOSS.into(), mean);
        }
        Ok(out)
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
