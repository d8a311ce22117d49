//! Causal self-attention fused, per head: `y = softmax(q·kᵀ·scale + causal mask) · v`, forward
//! and backward, without the `[t, t]` score matrix ever in memory.
//!
//! Row `i` of a head sees keys `0..=i`. The forward keeps one number per row, the log-sum-exp
//! `L_i` of its scaled logits; the backward recomputes each probability `p_ij = e^{s_ij − L_i}`
//! from it, with `D_i = dy_i · y_i`:
//! `dv_j += p_ij dy_i`, `ds_ij = p_ij (dy_i · v_j − D_i)`, `dq_i += scale ds_ij k_j`,
//! `dk_j += scale ds_ij q_i`. The logits over a row's keys, `dy·v`, and the dk, dv updates
//! each run as one vectorised pass per dimension over transposed `[d, t]` copies of the head.
//! Heads run in parallel on rayon's pool (candle's batched products run the heads one after
//! another on one core), the masked half is never computed, and the memory is O(t) per head,
//! so a long context fits where the scores would not. Grouped KV heads
//! are read in place: query head `h` uses KV head `h / (H / KVH)`.
//!
//! The forward also leaves the largest scaled logit (NaN if a row holds a NaN) for the
//! attention-logit tap, from the row maxima it takes anyway.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{Float, by_dtype, contiguous, dot, max, nan_max, sum};

pub struct CausalAttention {
    pub scale: f64,
    /// Each row's log-sum-exp, left by the forward for the backward.
    lse: Mutex<Vec<f64>>,
    /// The largest scaled logit of the forward.
    pub top: Arc<Mutex<f64>>,
}

impl CausalAttention {
    pub fn new(scale: f64) -> Self {
        Self {
            scale,
            lse: Mutex::new(Vec::new()),
            top: Arc::new(Mutex::new(f64::NAN)),
        }
    }
}

/// `[b, h, t, d]` of q and the KV heads of k and v, checked against each other.
fn shapes(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
    let (q, k, v) = (ql.dims(), kl.dims(), vl.dims());
    match (q, k) {
        ([b, h, t, d], [kb, kvh, kt, kd])
            if kb == b && kt == t && kd == d && *kvh > 0 && h % kvh == 0 && k == v && *t > 0 =>
        {
            Ok((*b, *h, *kvh, *t, *d))
        }
        _ => bail!("causal attention: q {q:?}, k {k:?}, v {v:?} do not fit [b, h, t, d]"),
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "keel-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = shapes(ql, kl, vl)?;
        let (out, lse, top) = by_dtype!(
            self.name(),
            qs.dtype(),
            forward(qs, ql, ks, kl, vs, vl, dims, self.scale)
        )?;
        *self.lse.lock().unwrap_or_else(|p| p.into_inner()) = lse;
        *self.top.lock().unwrap_or_else(|p| p.into_inner()) = top;
        Ok(out)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => backward::<f32>(q, k, v, y, dy, &lse, self.scale)?,
            DType::F64 => backward::<f64>(q, k, v, y, dy, &lse, self.scale)?,
            other => bail!("causal attention: unsupported dtype {other:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// A `[t, d]` head as `[d, t]`: column `c` of every row, contiguous, so a query's logits over
/// many keys are one vectorised multiply-add per dimension instead of a dot product per key.
fn transpose<T: Float>(x: &[T], t: usize, d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(t * d);
    for c in 0..d {
        out.extend((0..t).map(|j| x[j * d + c]));
    }
    out
}

/// `out[j] = scale · Σ_c a[c] · bt[c][j]` for the first `out.len()` columns of the `[d, t]`
/// transposed head `bt`.
fn scores_into<T: Float>(out: &mut [T], a: &[T], bt: &[T], t: usize, scale: T) {
    let n = out.len();
    out.iter_mut().for_each(|s| *s = T::zero());
    for (c, &ac) in a.iter().enumerate() {
        for (s, &b) in out.iter_mut().zip(&bt[c * t..][..n]) {
            *s += ac * b;
        }
    }
    out.iter_mut().for_each(|s| *s *= scale);
}

/// `acc += a · x`.
fn axpy<T: Float>(acc: &mut [T], a: T, x: &[T]) {
    for (s, &v) in acc.iter_mut().zip(x) {
        *s += a * v;
    }
}

#[allow(clippy::too_many_arguments)]
fn forward<T: Float>(
    qs: &CpuStorage,
    ql: &Layout,
    ks: &CpuStorage,
    kl: &Layout,
    vs: &CpuStorage,
    vl: &Layout,
    (b, h, kvh, t, d): (usize, usize, usize, usize, usize),
    scale: f64,
) -> Result<((CpuStorage, Shape), Vec<f64>, f64)> {
    let (q, k, v) = (
        contiguous::<T>(qs, ql)?,
        contiguous::<T>(ks, kl)?,
        contiguous::<T>(vs, vl)?,
    );
    let (rep, scale) = (h / kvh, T::from_f64(scale));
    let mut y = vec![T::zero(); b * h * t * d];
    let mut lse = vec![0.0f64; b * h * t];
    let tops: Vec<T> = y
        .par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .map(|(bh, (yh, lh))| {
            let kv = (bh / h) * kvh + (bh % h) / rep;
            let qh = &q[bh * t * d..][..t * d];
            let kt = transpose(&k[kv * t * d..][..t * d], t, d);
            let vh = &v[kv * t * d..][..t * d];
            let mut s = vec![T::zero(); t];
            let mut top = T::neg_infinity();
            for i in 0..t {
                let qi = &qh[i * d..][..d];
                let row = &mut s[..=i];
                scores_into(row, qi, &kt, t, scale);
                let m = max(row);
                for sj in row.iter_mut() {
                    *sj = (*sj - m).fast_exp();
                }
                let l = sum(row);
                top = if l.is_nan() && !m.is_infinite() {
                    l
                } else {
                    nan_max(top, m)
                };
                let yi = &mut yh[i * d..][..d];
                for (j, &p) in row.iter().enumerate() {
                    axpy(yi, p, &vh[j * d..][..d]);
                }
                let inv = l.recip();
                yi.iter_mut().for_each(|x| *x *= inv);
                lh[i] = num_traits::ToPrimitive::to_f64(&(m + l.ln())).unwrap_or(f64::NAN);
            }
            top
        })
        .collect();
    let top = tops.into_iter().fold(T::neg_infinity(), nan_max);
    let top = num_traits::ToPrimitive::to_f64(&top).unwrap_or(f64::NAN);
    let shape = Shape::from((b, h, t, d));
    Ok(((T::to_cpu_storage_owned(y), shape), lse, top))
}

/// A tensor's values, contiguous, on the host (the CPU: no transfer).
fn values<T: Float>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

fn backward<T: Float>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    lse: &[f64],
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let rep = h / kvh;
    if lse.len() != b * h * t {
        bail!("causal attention backward without its forward");
    }
    let (qv, kv, vv, yv, dyv) = (
        values::<T>(q)?,
        values::<T>(k)?,
        values::<T>(v)?,
        values::<T>(y)?,
        values::<T>(dy)?,
    );
    let sc = T::from_f64(scale);
    let mut dq = vec![T::zero(); qv.len()];
    let mut dk = vec![T::zero(); kv.len()];
    let mut dv = vec![T::zero(); vv.len()];
    // One task per KV head: it owns that head's dk, dv and the dq of the query heads it serves
    // (contiguous in [b, h, t, d]), so nothing is written by two tasks.
    dq.par_chunks_mut(rep * t * d)
        .zip(dk.par_chunks_mut(t * d))
        .zip(dv.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(g, ((dqg, dkh), dvh))| {
            let kh = &kv[g * t * d..][..t * d];
            let (kt, vt) = (
                transpose(kh, t, d),
                transpose(&vv[g * t * d..][..t * d], t, d),
            );
            let (mut p, mut dp) = (vec![T::zero(); t], vec![T::zero(); t]);
            // dk and dv accumulate transposed ([d, t]): each row adds to every key it saw in
            // one vectorised pass per dimension, and they are turned back at the end.
            let (mut dkt, mut dvt) = (vec![T::zero(); t * d], vec![T::zero(); t * d]);
            for r in 0..rep {
                let bh = (g / kvh) * h + (g % kvh) * rep + r;
                let qh = &qv[bh * t * d..][..t * d];
                let (yh, dyh) = (&yv[bh * t * d..][..t * d], &dyv[bh * t * d..][..t * d]);
                let dqh = &mut dqg[r * t * d..][..t * d];
                for i in 0..t {
                    let (qi, dyi) = (&qh[i * d..][..d], &dyh[i * d..][..d]);
                    let di = dot(dyi, &yh[i * d..][..d]);
                    let li = T::from_f64(lse[bh * t + i]);
                    // The row's probabilities, then ds = p (dy·v − D) scale over its keys.
                    let (pr, ds) = (&mut p[..=i], &mut dp[..=i]);
                    scores_into(pr, qi, &kt, t, sc);
                    pr.iter_mut().for_each(|x| *x = (*x - li).fast_exp());
                    scores_into(ds, dyi, &vt, t, T::one());
                    for (s, &pj) in ds.iter_mut().zip(pr.iter()) {
                        *s = pj * (*s - di) * sc;
                    }
                    for c in 0..d {
                        let (qc, dyc) = (qi[c], dyi[c]);
                        let dkc = &mut dkt[c * t..][..=i];
                        for (acc, &s) in dkc.iter_mut().zip(ds.iter()) {
                            *acc += s * qc;
                        }
                        let dvc = &mut dvt[c * t..][..=i];
                        for (acc, &pj) in dvc.iter_mut().zip(pr.iter()) {
                            *acc += pj * dyc;
                        }
                    }
                    let dqi = &mut dqh[i * d..][..d];
                    for (j, &s) in ds.iter().enumerate() {
                        axpy(dqi, s, &kh[j * d..][..d]);
                    }
                }
            }
            for j in 0..t {
                for c in 0..d {
                    dkh[j * d + c] = dkt[c * t + j];
                    dvh[j * d + c] = dvt[c * t + j];
                }
            }
        });
    let dev = q.device();
    Ok((
        Tensor::from_vec(dq, q.shape(), dev)?,
        Tensor::from_vec(dk, k.shape(), dev)?,
        Tensor::from_vec(dv, v.shape(), dev)?,
    ))
}
