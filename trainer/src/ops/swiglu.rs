//! Fused SwiGLU product `y = silu(g) ⊙ u`, `silu(g) = g · σ(g)`.
//!
//! Backward: `du = dy ⊙ silu(g)` and `dg = dy ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g)))`, both from one
//! kernel that returns `[2, n]` (`dg`, then `du`), split into two views of the same buffer.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Float, blocks_mut, blocks_mut2, by_dtype, contiguous, last_dim};

pub struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "keel-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), gs.dtype(), forward(gs, gl, us, ul))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SwiGluBwd)?;
        let dg = both.get(0)?.reshape(g.shape())?;
        let du = both.get(1)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// `σ(g) = 1 / (1 + e^−g)`.
fn sigmoid<T: Float>(g: T) -> T {
    (T::one() + (-g).fast_exp()).recip()
}

/// The gate and up inputs, checked to have one shape.
fn pair<'a, T: Float>(
    gs: &'a CpuStorage,
    gl: &Layout,
    us: &'a CpuStorage,
    ul: &Layout,
) -> Result<(&'a [T], &'a [T], usize)> {
    if gl.dims() != ul.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ", gl.dims(), ul.dims());
    }
    Ok((contiguous(gs, gl)?, contiguous(us, ul)?, last_dim(gl)?))
}

fn forward<T: Float>(
    gs: &CpuStorage,
    gl: &Layout,
    us: &CpuStorage,
    ul: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (g, u, width) = pair::<T>(gs, gl, us, ul)?;
    let mut y = vec![T::zero(); g.len()];
    blocks_mut(&mut y, width, |row0, out| {
        let at = row0 * width;
        let (g, u) = (&g[at..at + out.len()], &u[at..at + out.len()]);
        for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid(g) * u;
        }
    });
    Ok((T::to_cpu_storage_owned(y), gl.shape().clone()))
}

/// The backward kernel: `(g, u, dy)` → `[2, n]` (`dg`, then `du`).
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "keel-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), gs.dtype(), backward(gs, gl, us, ul, ds, dl))
    }
}

fn backward<T: Float>(
    gs: &CpuStorage,
    gl: &Layout,
    us: &CpuStorage,
    ul: &Layout,
    ds: &CpuStorage,
    dl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (g, u, width) = pair::<T>(gs, gl, us, ul)?;
    let dy = contiguous::<T>(ds, dl)?;
    if dy.len() != g.len() {
        bail!(
            "swiglu backward: {} gradients for {} outputs",
            dy.len(),
            g.len()
        );
    }
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    blocks_mut2(dg, du, width, |row0, dg, du| {
        let at = row0 * width;
        let len = dg.len();
        let (g, u, dy) = (&g[at..at + len], &u[at..at + len], &dy[at..at + len]);
        let inputs = g.iter().zip(u).zip(dy);
        for ((dg, du), ((&g, &u), &d)) in dg.iter_mut().zip(du).zip(inputs) {
            let s = sigmoid(g);
            *dg = d * u * s * (T::one() + g * (T::one() - s));
            *du = d * g * s;
        }
    });
    Ok((T::to_cpu_storage_owned(out), Shape::from((2, n))))
}
