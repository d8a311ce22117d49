//! The reference form of each op, composed from candle's differentiable tensor ops: what the
//! model runs off the CPU, and what the fused kernels are tested against.

use candle_core::{D, DType, Device, Result, Tensor};

/// RMSNorm over the last dimension with gain `g`.
pub fn rms_norm(x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(g)
}

/// `[t, t]`: 0 on and below the diagonal, −∞ above it.
pub fn causal_mask(t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (t, t), dev)?.to_dtype(dtype)
}

/// `scores · scale` plus the causal mask, `[.., t, t]`.
fn masked_logits(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let t = scores.dim(D::Minus1)?;
    (scores * scale)?.broadcast_add(&causal_mask(t, scores.dtype(), scores.device())?)
}

/// Causal softmax of `scores · scale` over the last dimension under `mask` (the `[t, t]`
/// causal mask, built once per length and kept on the device), and the largest masked logit, detached: the attention-logit tap, from the row maxima
/// `[.., t, 1]` the softmax subtracts (a reduction over t values per row instead of another
/// pass over the `t × t` scores). candle's max skips NaN; a NaN logit makes its row's sum NaN,
/// and the sum of the row sums carries it into the tap.
pub fn causal_softmax_masked(
    scores: &Tensor,
    scale: f64,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let x = (scores * scale)?.broadcast_add(mask)?;
    // Detached: softmax does not depend on the row max, so its gradient is exactly zero.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sums = e.sum_keepdim(D::Minus1)?;
    let probs = e.broadcast_div(&sums)?;
    let top = (max.flatten_all()?.max(0)? + (sums.detach().sum_all()? * 0.0)?)?;
    Ok((probs, top))
}

/// The largest unmasked entry of `scores · scale`, detached (masked entries are −∞).
pub fn causal_logit_max(scores: &Tensor, scale: f64) -> Result<Tensor> {
    masked_logits(&scores.detach(), scale)?
        .flatten_all()?
        .max(0)
}

/// Rotate pairs (i, i + half) of `[.., t, head_dim]` by the angles of the `cos`, `sin` tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

/// Grouped-query attention: each of the `[b, kvh, t, d]` KV heads repeated for the `rep` query
/// heads it serves.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kvh, rep, t, hd))?
        .reshape((b, kvh * rep, t, hd))
}

/// `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}
