//! AdamW with parameter groups, saveable moments, and clipping by the global gradient norm.
//!
//! candle-nn's AdamW decays every parameter it is given and keeps its moments private, so a
//! checkpoint could not resume it exactly. This one follows PyTorch's update rule (bias
//! correction, coupled decay w ← w − lr·λ·w), decays only what should be decayed (matrices,
//! optionally the embedding; never norms or WeSaR α), divides the hidden matrices' LR by µP's
//! width ratio, and exposes its moments by parameter name for checkpoints. Clipping folds the
//! clip factor (a scalar still on the device, see [`crate::stats::clip_scale`]) into the
//! gradient read, so it costs no extra pass and no read of the gradient norm.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::Tensor;

use crate::config::{InitScheme, OptimConfig, StabilityConfig};
use crate::params::{Kind, Param, Params};

/// First and second moments of one parameter.
struct Moments {
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    cfg: OptimConfig,
    /// LR multiplier of the hidden matrices (1/m under µP, else 1).
    matrix_lr_mult: f64,
    moments: HashMap<String, Moments>,
    /// Updates taken so far (the `t` of the bias correction).
    steps: u64,
}

impl AdamW {
    pub fn new(cfg: &OptimConfig, stab: &StabilityConfig, params: &Params) -> Result<Self> {
        let mup = stab.init == InitScheme::Mup && cfg.mup_lr;
        let moments = params
            .entries
            .iter()
            .map(|p| {
                let zeros = p.var.zeros_like()?;
                Ok((
                    p.name.clone(),
                    Moments {
                        m: zeros.clone(),
                        v: zeros,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            matrix_lr_mult: if mup { 1.0 / params.width_ratio() } else { 1.0 },
            moments,
            steps: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The (LR multiplier, weight decay) of a parameter's group.
    pub fn group(&self, p: &Param) -> (f64, f64) {
        match p.kind {
            Kind::Matrix => (self.matrix_lr_mult, self.cfg.weight_decay),
            Kind::Embedding if self.cfg.decay_embedding => (1.0, self.cfg.weight_decay),
            Kind::Embedding | Kind::Alpha | Kind::Norm => (1.0, 0.0),
        }
    }

    /// One update at base LR `lr`; `grads` are in parameter order, multiplied by the clip
    /// factor.
    pub fn step(
        &mut self,
        params: &Params,
        grads: &[Tensor],
        lr: f64,
        grad_scale: &GradScale,
    ) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        for (p, g) in params.entries.iter().zip(grads) {
            let (mult, wd) = self.group(p);
            self.update_one(p, g, lr * mult, wd, grad_scale, (bc1, bc2))?;
        }
        Ok(())
    }

    fn update_one(
        &mut self,
        p: &Param,
        g: &Tensor,
        lr: f64,
        wd: f64,
        grad_scale: &GradScale,
        (bc1, bc2): (f64, f64),
    ) -> Result<()> {
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        let st = self.moments.get_mut(&p.name).context("no moments")?;
        // A parameter's gradient still records the ops that produced it (candle detaches only
        // the intermediate gradients), so the moments would chain every step's forward graph
        // and keep it alive: memory grew by the size of a whole step's activations per step.
        let g = g.detach();
        let g = match grad_scale {
            GradScale::Host(s) if *s == 1.0 => g,
            GradScale::Host(s) => (g * *s)?,
            GradScale::Device(s) => g.broadcast_mul(&s.to_dtype(g.dtype())?)?,
        };
        st.m = (st.m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
        st.v = (st.v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
        let denom = ((st.v.affine(1.0 / bc2, 0.0)?.sqrt()?) + eps)?;
        let mut update = st.m.affine(lr / bc1, 0.0)?.div(&denom)?;
        let w = p.var.as_tensor();
        if wd > 0.0 {
            update = (update + w.affine(lr * wd, 0.0)?)?;
        }
        p.var.set(&(w - &update)?)?;
        Ok(())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, st) in &self.moments {
            out.insert(format!("m.{name}"), st.m.clone());
            out.insert(format!("v.{name}"), st.v.clone());
        }
        out
    }

    /// Restore moments and the update count from a checkpoint.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (name, st) in self.moments.iter_mut() {
            let (dtype, dev) = (st.m.dtype(), st.m.device().clone());
            let get = |k: String| -> Result<Tensor> {
                let t = tensors
                    .get(&k)
                    .with_context(|| format!("checkpoint lacks {k}"))?;
                Ok(t.to_dtype(dtype)?.to_device(&dev)?)
            };
            st.m = get(format!("m.{name}"))?;
            st.v = get(format!("v.{name}"))?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The clip factor as the update takes it: a number on the host (the CPU, where reading the
/// norm first costs nothing), or a scalar tensor still on the device (a GPU, where reading it
/// would stop the step to wait).
#[derive(Clone, Debug)]
pub enum GradScale {
    Host(f64),
    Device(Tensor),
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when within it,
/// or when clipping is off). A non-finite norm is left alone: the step is already lost, and
/// the NaN must stay visible rather than be scaled into zeros.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clip_factor_only_shrinks_finite_norms_above_the_limit() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, 0.0), 1.0);
        assert_eq!(clip_factor(f64::NAN, 1.0), 1.0);
    }
}
