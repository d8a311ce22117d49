//! Fused RoPE over `[.., t, head_dim]`, rotating pairs (i, i + half) at position `row mod t`:
//! `(x1, x2) → (x1·cos − x2·sin, x1·sin + x2·cos)`. A rotation's transpose is the rotation by
//! −θ, so the backward is this same kernel with the sines negated.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Float, blocks_mut, by_dtype, contiguous, last_dim};

pub struct Rope {
    /// Rotate by −θ (the backward).
    pub inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "keel-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            xs.dtype(),
            rotate(xs, xl, cs, cl, ss, sl, self.inverse)
        )
    }

    /// The tables are constants: only `x` gets a gradient.
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Rope {
            inverse: !self.inverse,
        };
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, sin, &op)?;
        Ok((Some(dx), None, None))
    }
}

fn rotate<T: Float>(
    xs: &CpuStorage,
    xl: &Layout,
    cs: &CpuStorage,
    cl: &Layout,
    ss: &CpuStorage,
    sl: &Layout,
    inverse: bool,
) -> Result<(CpuStorage, Shape)> {
    let (x, cos, sin) = (
        contiguous::<T>(xs, xl)?,
        contiguous::<T>(cs, cl)?,
        contiguous::<T>(ss, sl)?,
    );
    let (width, dims) = (last_dim(xl)?, xl.dims());
    let half = width / 2;
    let t = match dims {
        [.., t, _] if width % 2 == 0 => *t,
        _ => bail!("rope needs [.., t, even head_dim], got {dims:?}"),
    };
    if cos.len() != t * half || sin.len() != t * half {
        bail!(
            "rope: tables of {}/{} for {t} positions × {half}",
            cos.len(),
            sin.len()
        );
    }
    let mut y = vec![T::zero(); x.len()];
    blocks_mut(&mut y, width, |row0, out| {
        for (r, yr) in out.chunks_exact_mut(width).enumerate() {
            let row = row0 + r;
            let pos = row % t;
            let (x1, x2) = x[row * width..][..width].split_at(half);
            let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            let (y1, y2) = yr.split_at_mut(half);
            let pairs = x1.iter().zip(x2).zip(c.iter().zip(s));
            for ((y1, y2), ((&a, &b), (&c, &s))) in y1.iter_mut().zip(y2).zip(pairs) {
                let s = if inverse { -s } else { s };
                *y1 = a * c - b * s;
                *y2 = a * s + b * c;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
}
