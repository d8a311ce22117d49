//! Fused RMSNorm with a gain: `y = x · r · g` with `r = 1 / sqrt(mean(x²) + eps)` per row.
//!
//! Backward, per row of width `n`, with `dy` the incoming gradient:
//! `dx = r · g ⊙ dy − x · r³/n · Σ(dy ⊙ g ⊙ x)` and `dg = Σ_rows dy ⊙ x · r`.
//! One kernel computes both: it returns `[rows + 1, n]`, the rows of `dx` and then `dg`, which
//! the backward splits into two views of the same buffer.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Float, blocks_mut, by_dtype, contiguous, dot, last_dim};

pub struct RmsNorm {
    pub eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "keel-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), xs.dtype(), forward(xs, xl, gs, gl, self.eps))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(g, &dy.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let rows = x.elem_count() / g.elem_count();
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dg = both.get(rows)?.reshape(g.shape())?;
        Ok((Some(dx), Some(dg)))
    }
}

/// The gain and the row width, checked against the input's last dimension.
fn gain<'a, T: Float>(xl: &Layout, gs: &'a CpuStorage, gl: &Layout) -> Result<(&'a [T], usize)> {
    let (g, n) = (contiguous::<T>(gs, gl)?, last_dim(xl)?);
    if g.len() != n {
        bail!("rms_norm: gain of {} for rows of {n}", g.len());
    }
    Ok((g, n))
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
fn inv_rms<T: Float>(x: &[T], eps: T) -> T {
    let n = T::from_f64(x.len() as f64);
    (dot(x, x) / n + eps).sqrt().recip()
}

fn forward<T: Float>(
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(xs, xl)?;
    let (g, n) = gain::<T>(xl, gs, gl)?;
    let eps = T::from_f64(eps);
    let mut y = vec![T::zero(); x.len()];
    blocks_mut(&mut y, n, |row0, out| {
        for (r, yr) in out.chunks_exact_mut(n).enumerate() {
            let xr = &x[(row0 + r) * n..][..n];
            let inv = inv_rms(xr, eps);
            for ((y, &x), &g) in yr.iter_mut().zip(xr).zip(g) {
                *y = x * inv * g;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
}

/// The backward kernel: `(x, g, dy)` → `[rows + 1, n]` (`dx` rows, then `dg`).
struct RmsNormBwd {
    eps: f64,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "keel-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            xs.dtype(),
            backward(xs, xl, gs, gl, ds, dl, self.eps)
        )
    }
}

fn backward<T: Float>(
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
    ds: &CpuStorage,
    dl: &Layout,
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let (x, dy) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ds, dl)?);
    let (g, n) = gain::<T>(xl, gs, gl)?;
    if dy.len() != x.len() {
        bail!(
            "rms_norm backward: {} gradients for {} inputs",
            dy.len(),
            x.len()
        );
    }
    let rows = x.len() / n;
    let (eps, n_t) = (T::from_f64(eps), T::from_f64(n as f64));
    let mut out = vec![T::zero(); x.len() + n];
    let (dx, dg) = out.split_at_mut(x.len());
    // Each block returns its own partial `dg`; they are added in block order below.
    let partials = blocks_mut(dx, n, |row0, block| {
        let mut dg = vec![T::zero(); n];
        for (r, dxr) in block.chunks_exact_mut(n).enumerate() {
            let at = (row0 + r) * n;
            let (xr, dyr) = (&x[at..at + n], &dy[at..at + n]);
            let inv = inv_rms(xr, eps);
            let mut dyg_x = T::zero();
            for ((&d, &g), &x) in dyr.iter().zip(g).zip(xr) {
                dyg_x += d * g * x;
            }
            let c = inv * inv * inv / n_t * dyg_x;
            for (((dx, dg), &d), (&g, &x)) in
                dxr.iter_mut().zip(&mut dg).zip(dyr).zip(g.iter().zip(xr))
            {
                *dx = inv * g * d - c * x;
                *dg += d * x * inv;
            }
        }
        dg
    });
    for partial in partials {
        for (total, p) in dg.iter_mut().zip(partial) {
            *total += p;
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from((rows + 1, n))))
}
