//! The stability statistics: turning taps, gradients and updates into per-layer vectors and
//! per-step scalars with the names of the metrics contract.
//!
//! Everything here is reduced on the device to one scalar tensor per (parameter or block), then
//! stacked and copied to the host in one transfer per kind, because on a GPU each small
//! transfer is a synchronisation. The per-layer statistics are optional per step
//! (`stats.every`); the global gradient norm is always computed because clipping needs it.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Tensor};
use keel_protocol::{Metric, names};

use crate::model::BlockTaps;
use crate::params::{Kind, Params};

/// Reads from the device to the host the trainer has made (its steps' transfers, the CPU's
/// gradient-norm read, evaluations): what `keel bench trainer` counts per step. On a GPU each
/// is a synchronisation that stalls the step.
pub static HOST_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Count one read of [`HOST_READS`].
pub fn count_host_read() {
    HOST_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One step's numbers gathered on the device and read back to the host in one transfer: on a
/// GPU each read is a synchronisation, so a step makes one, after the update.
#[derive(Default)]
pub struct Transfer {
    parts: Vec<Tensor>,
    lens: Vec<usize>,
}

impl Transfer {
    /// Add a 1-D tensor or a scalar; returns its slot for [`Read::get`].
    pub fn push(&mut self, t: &Tensor) -> Result<usize> {
        let flat = t.flatten_all()?.to_dtype(DType::F64)?;
        self.lens.push(flat.elem_count());
        self.parts.push(flat);
        Ok(self.lens.len() - 1)
    }

    /// Add scalar tensors as one slot.
    pub fn push_scalars(&mut self, scalars: &[Tensor]) -> Result<usize> {
        if scalars.is_empty() {
            self.lens.push(0);
            return Ok(self.lens.len() - 1);
        }
        let flat: Vec<Tensor> = scalars
            .iter()
            .map(|t| t.flatten_all()?.to_dtype(DType::F64))
            .collect::<candle_core::Result<_>>()?;
        self.push(&Tensor::cat(&flat, 0)?)
    }

    /// The one transfer.
    pub fn read(self) -> Result<Read> {
        let values = if self.parts.is_empty() {
            Vec::new()
        } else {
            count_host_read();
            Tensor::cat(&self.parts, 0)?.to_vec1::<f64>()?
        };
        let mut starts = Vec::with_capacity(self.lens.len());
        let mut at = 0;
        for n in &self.lens {
            starts.push(at..at + n);
            at += n;
        }
        Ok(Read { values, starts })
    }
}

/// What a [`Transfer`] brought back, by slot.
pub struct Read {
    values: Vec<f64>,
    starts: Vec<std::ops::Range<usize>>,
}

impl Read {
    pub fn get(&self, slot: usize) -> &[f64] {
        &self.values[self.starts[slot].clone()]
    }
}

/// ‖t‖² of each tensor, as scalars on the device.
pub fn sq_norms<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Result<Vec<Tensor>> {
    tensors.map(|t| Ok(t.sqr()?.sum_all()?)).collect()
}

/// Where each block's weights are, for the statistics of what the model computes with: the
/// effective matrices (α·W̃ under WeSaR, where W̃ alone starts at σ 5e-5 and α carries the
/// scale) and, apart, the RMSNorm gains.
pub struct BlockWeights {
    /// Per block: (matrix index, its α's index) for every weight matrix.
    matrices: Vec<Vec<(usize, Option<usize>)>>,
    /// Per block: the indices of its norm gains.
    gains: Vec<Vec<usize>>,
}

impl BlockWeights {
    pub fn new(params: &Params, n_layers: usize) -> Self {
        let mut matrices = vec![Vec::new(); n_layers];
        let mut gains = vec![Vec::new(); n_layers];
        let index = |name: &str| params.entries.iter().position(|p| p.name == name);
        for (i, p) in params.entries.iter().enumerate() {
            let Some(b) = p.block else { continue };
            match p.kind {
                Kind::Matrix => {
                    let alpha = p
                        .name
                        .strip_suffix(".weight")
                        .and_then(|prefix| index(&format!("{prefix}.alpha")));
                    matrices[b].push((i, alpha));
                }
                Kind::Norm => gains[b].push(i),
                Kind::Alpha | Kind::Embedding => {}
            }
        }
        Self { matrices, gains }
    }

    /// Each block's effective matrices, flattened into one vector (a copy: callers keep it
    /// across an in-place update).
    pub fn effective(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        self.matrices
            .iter()
            .map(|block| {
                let parts = block
                    .iter()
                    .map(|&(w, alpha)| {
                        let w = tensors[w].flatten_all()?;
                        match alpha {
                            Some(a) => w.broadcast_mul(&tensors[a]),
                            None => Ok(w),
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?.copy()?)
            })
            .collect()
    }

    /// The RMS of each block's norm gains (1 at the start), as scalars still on the device.
    pub fn gain_rms(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        group_flat(&self.gains, tensors)?
            .iter()
            .map(|g| Ok(g.sqr()?.mean_all()?.sqrt()?))
            .collect()
    }
}

/// Parameter indices by block: `groups[i]` for block `i`, and a last group for the
/// parameters outside blocks (embedding, final norm).
pub fn block_groups(params: &Params, n_layers: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); n_layers + 1];
    for (i, p) in params.entries.iter().enumerate() {
        groups[p.block.unwrap_or(n_layers)].push(i);
    }
    groups
}

/// Each group of tensors (`tensors` in parameter order) flattened into one vector.
///
/// Norms are then taken per group, so a step costs a few ops per block rather than a few per
/// parameter: on a busy machine every op can wait on a descheduled worker thread, so the
/// number of ops matters more than the bytes they touch.
pub fn group_flat(groups: &[Vec<usize>], tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    groups
        .iter()
        .map(|g| {
            let parts = g
                .iter()
                .map(|i| tensors[*i].flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?;
            // A copy, never a view: callers keep it across an in-place update (and `cat`
            // of a single tensor may hand back that tensor).
            match parts.as_slice() {
                [one] => Ok(one.copy()?),
                _ => Ok(Tensor::cat(&parts, 0)?),
            }
        })
        .collect()
}

/// ‖·‖² of each group of tensors, as scalars on the device.
pub fn group_sq_norms(groups: &[Vec<usize>], tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let flat = group_flat(groups, tensors)?;
    sq_norms(flat.iter())
}

/// ‖a − b‖² of each pair of flattened groups, as scalars on the device.
pub fn diff_sq_norms(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    a.iter()
        .zip(b)
        .map(|(a, b)| Ok((a - b)?.sqr()?.sum_all()?))
        .collect()
}

/// The factor that clips a gradient of global norm `norm` (a scalar on the device) to
/// `max_norm`, computed on the device so that clipping needs no read of the norm first:
/// `max_norm / (norm + 1e-6)` when the norm is finite and above the limit, else 1 (a NaN or
/// infinite norm is left alone, as [`crate::optim::clip_factor`] says why). `None` when
/// clipping is off.
pub fn clip_scale(norm: &Tensor, max_norm: f64) -> Result<Option<Tensor>> {
    if max_norm <= 0.0 {
        return Ok(None);
    }
    let clip = norm.gt(max_norm)?.mul(&norm.lt(f64::INFINITY)?)?;
    let factor = ((norm + 1e-6)?.recip()? * max_norm)?;
    Ok(Some(clip.where_cond(&factor, &norm.ones_like()?)?))
}

/// The residual-stream and attention taps of every block, as four host vectors.
pub struct TapValues {
    pub hidden_var: Vec<f64>,
    pub hidden_rms: Vec<f64>,
    pub act_absmax: Vec<f64>,
    pub attn_logit_max: Vec<f64>,
}

impl TapValues {
    /// Queue every block's four taps on `transfer` (block after block); one slot.
    pub fn push(taps: &[BlockTaps], transfer: &mut Transfer) -> Result<usize> {
        let mut all = Vec::with_capacity(taps.len() * 4);
        for t in taps {
            all.extend(
                [
                    &t.hidden_var,
                    &t.hidden_rms,
                    &t.act_absmax,
                    &t.attn_logit_max,
                ]
                .map(Clone::clone),
            );
        }
        transfer.push_scalars(&all)
    }

    /// The four columns of a slot queued by [`TapValues::push`].
    pub fn from_host(v: &[f64]) -> Self {
        let column = |k: usize| v.iter().skip(k).step_by(4).copied().collect();
        TapValues {
            hidden_var: column(0),
            hidden_rms: column(1),
            act_absmax: column(2),
            attn_logit_max: column(3),
        }
    }
}

/// Everything measured per layer in one step, keyed by the contract's stat names.
pub struct LayerStats {
    pub taps: TapValues,
    /// ‖∇‖ of each block's parameters (before clipping): every tensor the optimizer updates
    /// (W̃, α and gains under WeSaR).
    pub grad_norm: Vec<f64>,
    /// ‖W‖ of each block's effective matrices (α·W̃ under WeSaR) before the update.
    pub param_norm: Vec<f64>,
    /// ‖ΔW‖/‖W‖ of each block's effective matrices.
    pub update_ratio: Vec<f64>,
    /// RMS of each block's RMSNorm gains, apart from the matrices.
    pub norm_gain: Vec<f64>,
}

impl LayerStats {
    /// Combine per-block squared norms (as from [`group_sq_norms`]; extra groups after the
    /// blocks are ignored) into the per-block statistics.
    pub fn new(
        taps: TapValues,
        grad_sq: &[f64],
        param_sq: &[f64],
        update_sq: &[f64],
        norm_gain: Vec<f64>,
    ) -> Self {
        let n = taps.hidden_var.len();
        let sqrt = |v: &[f64]| v[..n].iter().map(|x| x.sqrt()).collect::<Vec<_>>();
        let param_norm = sqrt(param_sq);
        let update_ratio = sqrt(update_sq)
            .iter()
            .zip(&param_norm)
            .map(|(u, w)| u / w)
            .collect();
        Self {
            taps,
            grad_norm: sqrt(grad_sq),
            param_norm,
            update_ratio,
            norm_gain,
        }
    }

    pub fn into_map(self) -> BTreeMap<String, Vec<Metric>> {
        let metrics = |v: Vec<f64>| v.into_iter().map(Metric::new).collect();
        [
            (names::HIDDEN_VAR, self.taps.hidden_var),
            (names::HIDDEN_RMS, self.taps.hidden_rms),
            (names::ACT_ABSMAX, self.taps.act_absmax),
            (names::ATTN_LOGIT_MAX, self.taps.attn_logit_max),
            (names::GRAD_NORM, self.grad_norm),
            (names::PARAM_NORM, self.param_norm),
            (names::UPDATE_RATIO, self.update_ratio),
            (names::NORM_GAIN, self.norm_gain),
        ]
        .into_iter()
        .map(|(name, v)| (name.to_string(), metrics(v)))
        .collect()
    }
}

/// Mean loss of each named source over the rows that came from it.
pub fn per_source_loss(
    row_loss: &[f64],
    row_source: &[usize],
    names: &[String],
) -> BTreeMap<String, f64> {
    let mut sums = vec![(0.0, 0usize); names.len()];
    for (l, s) in row_loss.iter().zip(row_source) {
        sums[*s].0 += l;
        sums[*s].1 += 1;
    }
    names
        .iter()
        .zip(sums)
        .filter(|(_, (_, n))| *n > 0)
        .map(|(name, (sum, n))| (format!("loss/{name}"), sum / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_clip_scale_is_the_host_clip_factor() {
        let dev = candle_core::Device::Cpu;
        for norm in [0.2, 1.0, 1.5, 40.0, f64::NAN, f64::INFINITY] {
            let t = Tensor::new(norm, &dev).unwrap();
            for max in [1.0, 0.5] {
                let got: f64 = clip_scale(&t, max).unwrap().unwrap().to_scalar().unwrap();
                let want = crate::optim::clip_factor(norm, max);
                assert!(
                    (got - want).abs() < 1e-12,
                    "norm {norm} max {max}: {got} vs {want}"
                );
            }
            assert!(clip_scale(&t, 0.0).unwrap().is_none());
        }
    }

    #[test]
    fn per_source_loss_averages_only_the_rows_of_each_source() {
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let got = per_source_loss(&[1.0, 3.0, 5.0], &[0, 2, 0], &names);
        assert_eq!(got.get("loss/a"), Some(&3.0));
        assert_eq!(got.get("loss/c"), Some(&3.0));
        assert!(!got.contains_key("loss/b"));
    }
}
