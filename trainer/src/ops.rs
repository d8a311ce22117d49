//! The model's element-wise and row-wise ops in two interchangeable forms: fused CPU kernels
//! with a backward, and the composed reference made of candle's differentiable tensor ops.
//!
//! candle-nn's fused CPU ops have no backward and silently stop gradients; the kernels here are
//! candle `CustomOp`s whose `bwd` is itself one fused kernel, so RMSNorm, the causal softmax,
//! RoPE and SwiGLU each cost one pass forward and one backward instead of five to twelve (each
//! of which also allocates). The kernels run on the CPU only, in f32 and f64 (f32's `exp` is a
//! vectorisable polynomial within 1 ulp, in `ops/exp.rs`), over contiguous inputs (the wrappers
//! copy the others), splitting rows across rayon's pool. [`Kernels`] picks the form: fused on
//! the CPU, composed on every other device, so CUDA keeps candle's own kernels. This module owns
//! no parameters and keeps no statistics; the gradients of the fused backward kernels are not
//! themselves differentiable (no second derivatives).

use candle_core::{CpuStorage, Device, Layout, Result, Tensor, WithDType, bail};
use rayon::prelude::*;

mod attention;
pub mod composed;
mod exp;
mod norm;
mod rope;
mod softmax;
mod swiglu;

/// How the attention is computed on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Batched products and the `[t, t]` scores: the faster at the proxies' lengths.
    #[default]
    Batched,
    /// The streaming kernel ([`attention`]): memory O(t) per head instead of O(t²); as fast at
    /// 128 tokens, 1.2× slower at 1,024; what a context too long for the scores runs on.
    Streaming,
}

/// Which implementation of the ops a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fused CPU kernels of this module.
    Fused,
    /// candle's differentiable tensor ops ([`composed`]): any device.
    Composed,
}

impl Kernels {
    /// Fused on the CPU, composed elsewhere (the fused kernels have no GPU code).
    pub fn for_device(dev: &Device) -> Self {
        if dev.is_cpu() {
            Self::Fused
        } else {
            Self::Composed
        }
    }

    /// Causal self-attention `softmax(q·kᵀ·scale + mask) · v` of `q` `[b, h, t, d]` over the
    /// KV heads `k`, `v` `[b, kvh, t, d]` (grouped: query head `i` reads KV head
    /// `i / (h / kvh)`). With `tap`, also the largest scaled logit, detached. Batched: the KV
    /// heads repeated, two batched products and the causal softmax (the fused one, or the
    /// composed one with `mask`, the `[t, t]` causal mask kept by the caller). Streaming (fused
    /// only): one kernel per head in parallel, no `[t, t]` matrix in memory ([`attention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn causal_attention(
        self,
        how: Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        mask: Option<&Tensor>,
        tap: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match (self, how) {
            (Self::Fused, Attention::Streaming) => {
                let op = attention::CausalAttention::new(scale);
                let top = op.top.clone();
                let y = q
                    .contiguous()?
                    .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?;
                let top = if tap {
                    let v = *top.lock().unwrap_or_else(|p| p.into_inner());
                    Some(Tensor::new(v, q.device())?.to_dtype(q.dtype())?)
                } else {
                    None
                };
                Ok((y, top))
            }
            (Self::Fused | Self::Composed, _) => {
                let rep = q.dim(1)? / k.dim(1)?;
                let (k, v) = (composed::repeat_kv(k, rep)?, composed::repeat_kv(v, rep)?);
                let scores = q.matmul(&k.t()?)?;
                // bf16 scores go through the softmax in f32 (as flash attention accumulates),
                // and the probabilities come back in bf16 for the product with V.
                let low = scores.dtype() == candle_core::DType::BF16;
                let scores = if low {
                    scores.to_dtype(candle_core::DType::F32)?
                } else {
                    scores
                };
                let (probs, top) = self.attention_softmax(&scores, scale, mask, tap)?;
                let probs = if low {
                    probs.to_dtype(candle_core::DType::BF16)?
                } else {
                    probs
                };
                Ok((probs.matmul(&v)?, top))
            }
        }
    }

    /// RMSNorm over the last dimension with gain `g`: `x / sqrt(mean(x²) + eps) · g`.
    pub fn rms_norm(self, x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
        match self {
            Self::Fused => x
                .contiguous()?
                .apply_op2(&g.contiguous()?, norm::RmsNorm { eps }),
            Self::Composed => composed::rms_norm(x, g, eps),
        }
    }

    /// Softmax over the last dimension of `scores · scale` `[.., t, t]` under the causal mask
    /// (row `i` of each `t × t` block sees columns `0..=i`; the others come out 0).
    pub fn causal_softmax(self, scores: &Tensor, scale: f64) -> Result<Tensor> {
        Ok(self.attention_softmax(scores, scale, None, false)?.0)
    }

    /// The causal softmax as the model runs it: `mask` is the composed form's `[t, t]` mask,
    /// kept by the caller (the fused kernel needs none). With `tap`, also the largest unmasked
    /// `scores · scale` as a detached scalar, taken from the row maxima the softmax computes
    /// anyway, so it costs no pass over the scores of its own.
    pub fn attention_softmax(
        self,
        scores: &Tensor,
        scale: f64,
        mask: Option<&Tensor>,
        tap: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match (self, mask) {
            (Self::Composed, Some(mask)) => {
                let (probs, top) = composed::causal_softmax_masked(scores, scale, mask)?;
                Ok((probs, tap.then_some(top)))
            }
            (Self::Composed, None) => {
                let t = scores.dim(candle_core::D::Minus1)?;
                let mask = composed::causal_mask(t, scores.dtype(), scores.device())?;
                self.attention_softmax(scores, scale, Some(&mask), tap)
            }
            (Self::Fused, _) => {
                let cell = tap.then(|| std::sync::Arc::new(std::sync::Mutex::new(f64::NAN)));
                let op = softmax::CausalSoftmax {
                    scale,
                    top: cell.clone(),
                };
                let probs = scores.contiguous()?.apply_op1(op)?;
                let top = match cell {
                    Some(c) => {
                        let v = *c.lock().unwrap_or_else(|p| p.into_inner());
                        Some(Tensor::new(v, scores.device())?.to_dtype(scores.dtype())?)
                    }
                    None => None,
                };
                Ok((probs, top))
            }
        }
    }

    /// Rotate pairs (i, i + half) of `x` `[.., t, head_dim]` by the angles whose cosines and
    /// sines are `cos`, `sin` (`t × head_dim/2` values, any leading unit dimensions).
    pub fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self {
            Self::Fused => x.contiguous()?.apply_op3(
                &cos.contiguous()?,
                &sin.contiguous()?,
                rope::Rope { inverse: false },
            ),
            Self::Composed => composed::rope(x, cos, sin),
        }
    }

    /// The SwiGLU product `silu(gate) ⊙ up`.
    pub fn swiglu(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            Self::Fused => gate
                .contiguous()?
                .apply_op2(&up.contiguous()?, swiglu::SwiGlu),
            Self::Composed => composed::swiglu(gate, up),
        }
    }
}

/// The float types the kernels are written for (f32 and f64).
trait Float: WithDType + num_traits::Float {
    /// `e^x`, in straight-line arithmetic for f32 ([`exp::exp_f32`]) so that loops vectorise.
    fn fast_exp(self) -> Self;
}

impl Float for f32 {
    #[inline]
    fn fast_exp(self) -> Self {
        exp::exp_f32(self)
    }
}

impl Float for f64 {
    #[inline]
    fn fast_exp(self) -> Self {
        self.exp()
    }
}

/// Runs `$run::<T>(args)` for the storage's float type, or refuses the others.
macro_rules! by_dtype {
    ($name:expr, $dtype:expr, $run:ident($($arg:expr),*)) => {
        match $dtype {
            candle_core::DType::F32 => $run::<f32>($($arg),*),
            candle_core::DType::F64 => $run::<f64>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $name),
        }
    };
}
use by_dtype;

/// The elements of a contiguous input. The wrappers in [`Kernels`] make inputs contiguous, and
/// the backward passes do the same for the incoming gradient, so a strided layout here is a bug.
fn contiguous<'a, T: Float>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("keel ops take contiguous inputs"),
    }
}

/// The last dimension of a layout, refusing a scalar.
fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!(
            "keel ops need a non-empty last dimension, got {:?}",
            layout.dims()
        ),
    }
}

/// Elements per block of rows handed to one rayon task: enough work to amortise the task, and
/// several blocks for 2 threads to balance on the model's tensors. Blocks are fixed by size, not
/// by thread count, so partial sums (the RMSNorm gain's gradient) are added in the same order
/// whatever the number of threads, and results stay bit-identical from run to run.
const BLOCK_ELEMS: usize = 16 * 1024;

fn rows_per_block(width: usize) -> usize {
    (BLOCK_ELEMS / width).max(1)
}

/// `f(first_row, rows)` for each block of whole `width`-wide rows of `out`, in order of blocks in
/// the result; in parallel when there is more than one block.
fn blocks_mut<T, R, F>(out: &mut [T], width: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut [T]) -> R + Sync,
{
    let rows = rows_per_block(width);
    if out.len() <= rows * width {
        // One block: calling rayon would only hand it to another thread and wait.
        return vec![f(0, out)];
    }
    out.par_chunks_mut(rows * width)
        .enumerate()
        .map(|(i, block)| f(i * rows, block))
        .collect()
}

/// As [`blocks_mut`], over two outputs of the same shape, block by block side by side.
fn blocks_mut2<T, F>(a: &mut [T], b: &mut [T], width: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T], &mut [T]) + Sync,
{
    let rows = rows_per_block(width);
    if a.len() <= rows * width {
        return f(0, a, b);
    }
    a.par_chunks_mut(rows * width)
        .zip(b.par_chunks_mut(rows * width))
        .enumerate()
        .for_each(|(i, (a, b))| f(i * rows, a, b));
}

/// Eight independent lanes folded with `f`, then together: a reduction the compiler can
/// vectorise (a plain float fold is a serial dependency chain it may not reorder).
fn fold8<T: Float>(x: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    acc.iter().fold(tail, |a, &v| f(a, v))
}

/// The larger of two, or NaN if either is NaN (a tap must show a NaN, where `max` skips it).
fn nan_max<T: Float>(a: T, b: T) -> T {
    if b > a || b.is_nan() { b } else { a }
}

/// `Σ x`.
fn sum<T: Float>(x: &[T]) -> T {
    fold8(x, T::zero(), |a, b| a + b)
}

/// The largest element, skipping NaN (−∞ for an empty slice).
fn max<T: Float>(x: &[T]) -> T {
    fold8(x, T::neg_infinity(), num_traits::Float::max)
}

/// `Σ a·b` with eight independent partial sums, so the loop vectorises (a plain float sum is a
/// serial dependency chain the compiler may not reorder).
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}
