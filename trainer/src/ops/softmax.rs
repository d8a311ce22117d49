//! The attention-scores path fused: `softmax(scores · scale + causal mask)` over the last
//! dimension of `[.., t, t]`, its backward, and the max-logit tap from its row maxima.
//!
//! Row `r` of the flattened scores is query position `i = r mod t`, which sees keys `0..=i`;
//! the masked tail of each row is never read and comes out exactly 0, forward and backward.
//! Backward: `dx = scale · y ⊙ (dy − Σ dy ⊙ y)` over the unmasked part of the row.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::{Float, blocks_mut, by_dtype, contiguous, dot, max, nan_max, sum};

pub struct CausalSoftmax {
    pub scale: f64,
    /// Where the forward leaves the largest unmasked `scores · scale` (NaN if any row has a
    /// NaN): the attention-logit tap, from the row maxima the softmax takes anyway.
    pub top: Option<std::sync::Arc<std::sync::Mutex<f64>>>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "keel-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, top) = by_dtype!(self.name(), s.dtype(), forward(s, l, self.scale))?;
        if let Some(cell) = &self.top {
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = top;
        }
        Ok(out)
    }

    fn bwd(&self, _scores: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = CausalSoftmaxBwd { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// The side of the square `[.., t, t]` blocks.
fn square(l: &Layout) -> Result<usize> {
    match l.dims() {
        [.., a, b] if a == b && *b > 0 => Ok(*b),
        dims => bail!("causal softmax needs [.., t, t] scores, got {dims:?}"),
    }
}

/// The softmax, and the largest scaled logit of all rows (NaN when a row holds a NaN).
fn forward<T: Float>(s: &CpuStorage, l: &Layout, scale: f64) -> Result<((CpuStorage, Shape), f64)> {
    let (x, t) = (contiguous::<T>(s, l)?, square(l)?);
    let scale = T::from_f64(scale);
    let mut y = vec![T::zero(); x.len()];
    let tops = blocks_mut(&mut y, t, |row0, out| {
        let mut top = T::neg_infinity();
        for (r, yr) in out.chunks_exact_mut(t).enumerate() {
            let row = row0 + r;
            let len = row % t + 1;
            let (xr, yr) = (&x[row * t..][..len], &mut yr[..len]);
            // Separate passes, each of which vectorises. `max` skips NaN; a NaN logit still
            // makes its whole row NaN through the sum. Scaling by a positive number keeps the
            // order, so the max of the scaled row is the scaled max.
            let max = max(xr) * scale;
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = (x * scale - max).fast_exp();
            }
            let total = sum(yr);
            // A NaN logit makes the row's sum NaN: the tap must show it.
            top = if total.is_nan() && !max.is_infinite() {
                total
            } else {
                nan_max(top, max)
            };
            let inv = total.recip();
            yr.iter_mut().for_each(|y| *y *= inv);
        }
        top
    });
    let top = tops.into_iter().fold(T::neg_infinity(), nan_max);
    let top = num_traits::ToPrimitive::to_f64(&top).unwrap_or(f64::NAN);
    Ok(((T::to_cpu_storage_owned(y), l.shape().clone()), top))
}

/// The backward kernel: `(y, dy)` → `dx`.
struct CausalSoftmaxBwd {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "keel-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            ys.dtype(),
            backward(ys, yl, ds, dl, self.scale)
        )
    }
}

fn backward<T: Float>(
    ys: &CpuStorage,
    yl: &Layout,
    ds: &CpuStorage,
    dl: &Layout,
    scale: f64,
) -> Result<(CpuStorage, Shape)> {
    let (y, dy, t) = (
        contiguous::<T>(ys, yl)?,
        contiguous::<T>(ds, dl)?,
        square(yl)?,
    );
    if dy.len() != y.len() {
        bail!(
            "causal softmax backward: {} gradients for {} outputs",
            dy.len(),
            y.len()
        );
    }
    let scale = T::from_f64(scale);
    let mut dx = vec![T::zero(); y.len()];
    blocks_mut(&mut dx, t, |row0, out| {
        for (r, dxr) in out.chunks_exact_mut(t).enumerate() {
            let row = row0 + r;
            let len = row % t + 1;
            let (yr, dyr) = (&y[row * t..][..len], &dy[row * t..][..len]);
            let inner = dot(yr, dyr);
            for ((dx, &y), &d) in dxr[..len].iter_mut().zip(yr).zip(dyr) {
                *dx = scale * y * (d - inner);
            }
        }
    });
    Ok((T::to_cpu_storage_owned(dx), yl.shape().clone()))
}
