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
use crate::ops::{Attention, Kernels};
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

    /// `x @ (α·W̃)ᵀ` over the last dimension of a `[b, t, in]` input, in the input's dtype
    /// (bf16 compute casts the f32 master weights here, and the gradient flows back to them).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let w = like(&self.w, x)?;
        let w = match &self.alpha {
            Some(a) => w.broadcast_mul(&like(a, x)?)?,
            None => w,
        };
        let y = x.reshape((b * t, d))?.matmul(&w.t()?)?;
        Ok(y.reshape((b, t, w.dim(0)?))?)
    }
}

/// `t` in the dtype of `x`: a no-op unless the model computes in a lower precision than its
/// master weights.
fn like(t: &Tensor, x: &Tensor) -> Result<Tensor> {
    if t.dtype() == x.dtype() {
        Ok(t.clone())
    } else {
        Ok(t.to_dtype(x.dtype())?)
    }
}

/// RMSNorm in at least f32, as YuLan-Mini computes it: a bf16 input is normalised in f32 and
/// cast back.
fn norm(k: Kernels, x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() == DType::BF16 {
        let y = k.rms_norm(&x.to_dtype(DType::F32)?, &g.to_dtype(DType::F32)?, eps)?;
        Ok(y.to_dtype(DType::BF16)?)
    } else {
        Ok(k.rms_norm(x, &like(g, x)?, eps)?)
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

/// What every layer of a forward at one length reads: the RoPE tables and, for the composed
/// softmax, the causal mask. Built once per (length, θ, dtype) and kept on the device, not
/// rebuilt and uploaded by every layer of every step.
pub struct Tables {
    key: (usize, u64, DType),
    rope: Rope,
    mask: Option<Tensor>,
}

impl Tables {
    fn new(
        t: usize,
        cfg: &ModelConfig,
        kernels: Kernels,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        // The softmax runs in at least f32 (see `Block::attention`), and so does its mask.
        let mask_dtype = if dtype == DType::BF16 {
            DType::F32
        } else {
            dtype
        };
        let mask = match kernels {
            Kernels::Composed => Some(crate::ops::composed::causal_mask(t, mask_dtype, dev)?),
            Kernels::Fused => None,
        };
        Ok(Self {
            key: (t, cfg.rope_theta.to_bits(), dtype),
            rope: Rope::new(t, cfg.head_dim(), cfg.rope_theta, dtype, dev)?,
            mask,
        })
    }
}

/// Per-forward context shared by every block: shapes, tables and the ops' implementation.
struct Ctx<'a> {
    cfg: &'a ModelConfig,
    tables: &'a Tables,
    kernels: Kernels,
    attention: Attention,
    residual_scale: f64,
}

impl Block {
    fn forward(&self, x: &Tensor, cx: &Ctx, taps: Option<&mut Vec<BlockTaps>>) -> Result<Tensor> {
        let (eps, k) = (cx.cfg.norm_eps, cx.kernels);
        let h = norm(k, x, &self.attn_norm, eps)?;
        let (attn, logit_max) = self.attention(&h, cx, taps.is_some())?;
        let x = (x + (attn * cx.residual_scale)?)?;
        let h = norm(k, &x, &self.mlp_norm, eps)?;
        let mlp = self
            .down
            .forward(&k.swiglu(&self.gate.forward(&h)?, &self.up.forward(&h)?)?)?;
        let out = (x + (mlp * cx.residual_scale)?)?;
        if let (Some(taps), Some(logit_max)) = (taps, logit_max) {
            let detached = match out.dtype() {
                DType::BF16 => out.detach().to_dtype(DType::F32)?,
                _ => out.detach(),
            };
            taps.push(residual_taps(&detached, logit_max)?);
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
            q = norm(kern, &q, qn, cx.cfg.norm_eps)?;
            k = norm(kern, &k, kn, cx.cfg.norm_eps)?;
        }
        let rope = &cx.tables.rope;
        let (q, k) = (rope.apply(kern, &q)?, rope.apply(kern, &k)?);
        // The 1/√d scale and the causal mask are applied inside, which also hands back the
        // largest logit when the taps are recorded.
        let scale = 1.0 / (hd as f64).sqrt();
        let (y, logit_max) = kern.causal_attention(
            cx.attention,
            &q,
            &k,
            &v,
            scale,
            cx.tables.mask.as_ref(),
            tap,
        )?;
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        Ok((self.o.forward(&y)?, logit_max))
    }
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
    /// The tables of the last length seen (a run changes length only on `anneal`).
    tables: std::sync::Mutex<Option<std::sync::Arc<Tables>>>,
    /// The dtype activations are computed in: the parameters' own, or bf16 over f32 master
    /// weights (see [`Model::set_compute_dtype`]).
    compute: DType,
    /// Batched, or streaming for a context whose scores would not fit (the fused kernels only).
    attention: Attention,
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
            tables: Default::default(),
            compute: dtype,
            attention: Attention::Batched,
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
        *self.tables.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Compute activations in `dtype` over the master weights (bf16 over f32): weights are cast
    /// as each op reads them, gradients flow back to the master copies in their dtype, and
    /// RMSNorm, the attention softmax, the loss and the taps run in f32. The fused kernels
    /// are f32 and f64 only, so bf16 runs the composed ops.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute = dtype;
        if dtype == DType::BF16 {
            self.kernels = Kernels::Composed;
        }
        *self.tables.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Run the attention batched or streaming (streaming runs on the fused kernels only; the
    /// composed ops stay batched).
    pub fn set_attention(&mut self, attention: Attention) {
        self.attention = attention;
    }

    pub fn attention(&self) -> Attention {
        self.attention
    }

    /// The tables for length `t` at the current θ: the kept ones when they fit, else new ones
    /// (which are then kept).
    fn tables(&self, t: usize) -> Result<std::sync::Arc<Tables>> {
        let (dtype, dev) = (self.compute, self.embed.device());
        let key = (t, self.cfg.rope_theta.to_bits(), dtype);
        let mut kept = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = kept.as_ref().filter(|k| k.key == key) {
            return Ok(t.clone());
        }
        let fresh = std::sync::Arc::new(Tables::new(t, &self.cfg, self.kernels, dtype, dev)?);
        *kept = Some(fresh.clone());
        Ok(fresh)
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
        let tables = self.tables(t)?;
        let cx = Ctx {
            cfg: &self.cfg,
            tables: &tables,
            kernels: self.kernels,
            attention: self.attention,
            residual_scale: self.residual_scale(),
        };
        let mut recorded = taps.then(|| Vec::with_capacity(self.blocks.len()));
        let embed = if self.compute == self.embed.dtype() {
            self.embed.clone()
        } else {
            self.embed.to_dtype(self.compute)?
        };
        let emb = embed.index_select(&tokens.flatten_all()?, 0)?;
        let mut x = (emb * self.stab.emb_multiplier)?.reshape((b, t, self.cfg.d_model))?;
        for block in &self.blocks {
            x = block.forward(&x, &cx, recorded.as_mut())?;
        }
        let x = norm(self.kernels, &x, &self.final_norm, self.cfg.norm_eps)?;
        let mut logits = x.reshape((b * t, self.cfg.d_model))?.matmul(&embed.t()?)?;
        // The loss is taken in the master dtype (f32 under bf16 compute).
        if logits.dtype() != self.embed.dtype() {
            logits = logits.to_dtype(self.embed.dtype())?;
        }
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
