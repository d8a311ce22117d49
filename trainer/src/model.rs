//! The Llama-style decoder: tied token embedding, pre-norm RMSNorm blocks with RoPE causal
//! attention (optional grouped KV heads and QK-norm) and a SwiGLU MLP, plus the loss.
//!
//! RMSNorm, the causal softmax, RoPE and SwiGLU come from [`crate::ops`]: fused kernels with a
//! backward on the CPU, candle's differentiable tensor ops elsewhere ([`Kernels`]); never
//! candle-nn's fused CPU ops, which have no backward and would silently stop gradients. The
//! forward can record the stability taps of each block (output variance, RMS, max |x|,
//! attention-logit max) on detached tensors, so the taps never enter the backward pass.
//! Parameters live in [`Params`]; this module only reads them.

use anyhow::Result;
use candle_core::{D, DType, Device, Tensor};

use crate::config::{InitScheme, ModelConfig, StabilityConfig};
use crate::ops::Kernels;
use crate::params::{Params, Role};

/// A weight matrix, possibly WeSaR-reparameterised as α·W̃.
struct Linear {
    w: Tensor,
    alpha: Option<Tensor>,
}

impl Linear {
    fn new(
        p: &mut Params,
        name: &str,
        out_in: (usize, usize),
        role: Role,
        block: usize,
    ) -> Result<Self> {
        let (w, alpha) = p.matrix(name, out_in, role, block)?;
        Ok(Self { w, alpha })
    }

    /// `x @ (α·W̃)ᵀ` over the last dimension of a `[b, t, in]` input.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let w = match &self.alpha {
            Some(a) => self.w.broadcast_mul(a)?,
            None => self.w.clone(),
        };
        let y = x.reshape((b * t, d))?.matmul(&w.t()?)?;
        Ok(y.reshape((b, t, w.dim(0)?))?)
    }
}

/// The rotary tables for `t` positions: `cos`, `sin`, each `[1, 1, t, head_dim/2]`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(t: usize, head_dim: usize, theta: f64, dtype: DType, dev: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in 0..t {
            for i in 0..half {
                let freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (1, 1, t, half), dev)?.to_dtype(dtype)?)
        };
        Ok(Self {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Rotate pairs (i, i + half) of a `[b, h, t, head_dim]` tensor.
    fn apply(&self, kernels: Kernels, x: &Tensor) -> Result<Tensor> {
        Ok(kernels.rope(x, &self.cos, &self.sin)?)
    }
}

/// What one block's forward recorded, each a scalar tensor (not yet on the host).
pub struct BlockTaps {
    pub hidden_var: Tensor,
    pub hidden_rms: Tensor,
    pub act_absmax: Tensor,
    pub attn_logit_max: Tensor,
}

struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Block {
    fn new(p: &mut Params, cfg: &ModelConfig, stab: &StabilityConfig, i: usize) -> Result<Self> {
        let (d, hd, f) = (cfg.d_model, cfg.head_dim(), cfg.d_ffn);
        let kv = cfg.kv_heads() * hd;
        let pre = format!("blocks.{i}");
        let qk_norm = |p: &mut Params, n: &str| -> Result<Option<Tensor>> {
            if !stab.qk_norm {
                return Ok(None);
            }
            Ok(Some(p.norm(
                &format!("{pre}.attn.{n}.weight"),
                hd,
                Some(i),
            )?))
        };
        Ok(Self {
            attn_norm: p.norm(&format!("{pre}.attn_norm.weight"), d, Some(i))?,
            q: Linear::new(p, &format!("{pre}.attn.q"), (d, d), Role::Input, i)?,
            k: Linear::new(p, &format!("{pre}.attn.k"), (kv, d), Role::Input, i)?,
            v: Linear::new(p, &format!("{pre}.attn.v"), (kv, d), Role::Input, i)?,
            o: Linear::new(p, &format!("{pre}.attn.o"), (d, d), Role::Output, i)?,
            q_norm: qk_norm(p, "q_norm")?,
            k_norm: qk_norm(p, "k_norm")?,
            mlp_norm: p.norm(&format!("{pre}.mlp_norm.weight"), d, Some(i))?,
            gate: Linear::new(p, &format!("{pre}.mlp.gate"), (f, d), Role::Input, i)?,
            up: Linear::new(p, &format!("{pre}.mlp.up"), (f, d), Role::Input, i)?,
            down: Linear::new(p, &format!("{pre}.mlp.down"), (d, f), Role::Output, i)?,
        })
    }
}

/// Per-forward context shared by every block: shapes, tables and the ops' implementation.
struct Ctx<'a> {
    cfg: &'a ModelConfig,
    rope: &'a Rope,
    kernels: Kernels,
    residual_scale: f64,
}

impl Block {
    fn forward(&self, x: &Tensor, cx: &Ctx, taps: Option<&mut Vec<BlockTaps>>) -> Result<Tensor> {
        let (eps, k) = (cx.cfg.norm_eps, cx.kernels);
        let h = k.rms_norm(x, &self.attn_norm, eps)?;
        let (attn, logit_max) = self.attention(&h, cx, taps.is_some())?;
        let x = (x + (attn * cx.residual_scale)?)?;
        let h = k.rms_norm(&x, &self.mlp_norm, eps)?;
        let mlp = self
            .down
            .forward(&k.swiglu(&self.gate.forward(&h)?, &self.up.forward(&h)?)?)?;
        let out = (x + (mlp * cx.residual_scale)?)?;
        if let (Some(taps), Some(logit_max)) = (taps, logit_max) {
            taps.push(residual_taps(&out.detach(), logit_max)?);
        }
        Ok(out)
    }

    /// Causal self-attention; with `tap`, also the max pre-softmax logit (detached).
    fn attention(&self, x: &Tensor, cx: &Ctx, tap: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, d) = x.dims3()?;
        let (h, kvh, hd) = (cx.cfg.n_heads, cx.cfg.kv_heads(), cx.cfg.head_dim());
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let mut q = heads(self.q.forward(x)?, h)?;
        let mut k = heads(self.k.forward(x)?, kvh)?;
        let v = heads(self.v.forward(x)?, kvh)?;
        let kern = cx.kernels;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = kern.rms_norm(&q, qn, cx.cfg.norm_eps)?;
            k = kern.rms_norm(&k, kn, cx.cfg.norm_eps)?;
        }
        let q = cx.rope.apply(kern, &q)?;
        let (k, v) = (
            repeat_kv(cx.rope.apply(kern, &k)?, h / kvh)?,
            repeat_kv(v, h / kvh)?,
        );
        // The 1/√d scale and the causal mask are applied inside the softmax.
        let scores = q.matmul(&k.t()?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = kern.causal_softmax(&scores, scale)?;
        // A separate pass over the (detached) scores, only when the taps are recorded.
        let logit_max = tap
            .then(|| kern.causal_logit_max(&scores, scale))
            .transpose()?;
        let y = probs.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        Ok((self.o.forward(&y)?, logit_max))
    }
}

/// Grouped-query attention: each KV head serves `rep` query heads.
fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kvh, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kvh, rep, t, hd))?
        .reshape((b, kvh * rep, t, hd))?)
}

/// The residual-stream taps of one block output `[b, t, d]` (already detached).
fn residual_taps(x: &Tensor, attn_logit_max: Tensor) -> Result<BlockTaps> {
    // Population variance over the hidden dimension, E[x²] − E[x]² per token, then the mean
    // over tokens, so that hidden_rms² = hidden_var + mean² holds exactly (averaged over
    // tokens). One squaring pass and three reductions: this runs every step.
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let hidden_var = (&mean_sq - mean.sqr()?)?.mean_all()?;
    let hidden_rms = mean_sq.mean_all()?.sqrt()?;
    let act_absmax = x.abs()?.flatten_all()?.max(0)?;
    Ok(BlockTaps {
        hidden_var,
        hidden_rms,
        act_absmax,
        attn_logit_max,
    })
}

/// The decoder. Holds tensors that share storage with the [`Params`] variables, so an
/// optimizer step on the variables is what the next forward sees.
pub struct Model {
    cfg: ModelConfig,
    stab: StabilityConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    kernels: Kernels,
}

/// The result of a forward pass: logits `[b·t, vocab]` and, when asked, one tap set per block.
pub struct Forward {
    pub logits: Tensor,
    pub taps: Option<Vec<BlockTaps>>,
}

impl Model {
    /// Build the model and its parameters, initialised from `seed`.
    pub fn new(
        cfg: &ModelConfig,
        stab: &StabilityConfig,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Self, Params)> {
        let mut p = Params::new(cfg, stab, seed, dtype, dev);
        let embed = p.embedding("embed.weight")?;
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::new(&mut p, cfg, stab, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = p.norm("final_norm.weight", cfg.d_model, None)?;
        let model = Self {
            cfg: cfg.clone(),
            stab: stab.clone(),
            embed,
            blocks,
            final_norm,
            kernels: Kernels::for_device(dev),
        };
        Ok((model, p))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Which implementation of the fused ops the forward runs (fused on the CPU).
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Run the other implementation: the composed ops on the CPU, to compare the two (tests).
    /// The fused kernels exist for the CPU only.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Change RoPE θ (annealing's context extension); parameters are unaffected.
    pub fn set_rope_theta(&mut self, theta: f64) {
        self.cfg.rope_theta = theta;
    }

    /// The output logits' multiplier: 1/m under µP with `mup_logits`, else 1.
    pub fn logit_scale(&self) -> f64 {
        if self.stab.init == InitScheme::Mup && self.stab.mup_logits {
            self.stab.mup_base_width as f64 / self.cfg.d_model as f64
        } else {
            1.0
        }
    }

    /// depth-µP: each residual branch is scaled by 1.4/√L before it is added.
    pub fn residual_scale(&self) -> f64 {
        if self.stab.depth_mup {
            1.4 / (self.cfg.n_layers as f64).sqrt()
        } else {
            1.0
        }
    }

    /// Logits for `tokens` `[b, t]` (u32); records the taps when `taps` is true.
    pub fn forward(&self, tokens: &Tensor, taps: bool) -> Result<Forward> {
        let (b, t) = tokens.dims2()?;
        let (dtype, dev) = (self.embed.dtype(), self.embed.device());
        let rope = Rope::new(t, self.cfg.head_dim(), self.cfg.rope_theta, dtype, dev)?;
        let cx = Ctx {
            cfg: &self.cfg,
            rope: &rope,
            kernels: self.kernels,
            residual_scale: self.residual_scale(),
        };
        let mut recorded = taps.then(|| Vec::with_capacity(self.blocks.len()));
        let emb = self.embed.index_select(&tokens.flatten_all()?, 0)?;
        let mut x = (emb * self.stab.emb_multiplier)?.reshape((b, t, self.cfg.d_model))?;
        for block in &self.blocks {
            x = block.forward(&x, &cx, recorded.as_mut())?;
        }
        let x = self
            .kernels
            .rms_norm(&x, &self.final_norm, self.cfg.norm_eps)?;
        let mut logits = x
            .reshape((b * t, self.cfg.d_model))?
            .matmul(&self.embed.t()?)?;
        let scale = self.logit_scale();
        if scale != 1.0 {
            logits = (logits * scale)?;
        }
        Ok(Forward {
            logits,
            taps: recorded,
        })
    }
}

/// Cross-entropy and z-loss of `logits` `[n, vocab]` against `targets` `[n]` (u32).
pub struct Loss {
    /// Cross-entropy + ζ·z: what is differentiated.
    pub total: Tensor,
    /// Mean cross-entropy (the reported `loss`).
    pub ce: Tensor,
    /// The z-loss term as added, ζ·mean(logsumexp²).
    pub z: Tensor,
    /// Cross-entropy per token `[n]`, detached, for the per-source losses.
    pub per_token: Tensor,
}

pub fn loss(logits: &Tensor, targets: &Tensor, z_coef: f64) -> Result<Loss> {
    let max = logits.max_keepdim(1)?.detach();
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
    let target_logit = logits.gather(&targets.unsqueeze(1)?, 1)?;
    let per_token = (&lse - target_logit)?.squeeze(1)?;
    let ce = per_token.mean_all()?;
    let z = (lse.sqr()?.mean_all()? * z_coef)?;
    let total = if z_coef > 0.0 {
        (&ce + &z)?
    } else {
        ce.clone()
    };
    Ok(Loss {
        total,
        ce,
        z,
        per_token: per_token.detach(),
    })
}
