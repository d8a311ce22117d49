//! The parameter store: every trainable tensor of a model, by checkpoint name, with the facts
//! the optimizer and the statistics need (which group it is in, which block it belongs to).
//!
//! Parameters are initialised here, from the run's own seeded generator (one stream per name),
//! following the configured scheme: `normal_0.02`, `scaled` or `mup`, optionally re-written as
//! WeSaR's α·W̃. Names are checkpoint keys (`blocks.3.attn.q.weight`): renaming one is a
//! checkpoint format change. This module knows nothing of the forward pass.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor, Var};

use crate::config::{InitScheme, ModelConfig, StabilityConfig};
use crate::rng::Rng;

/// What a parameter is, which decides its weight decay, its LR and its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The token embedding (also the tied output head).
    Embedding,
    /// A hidden weight matrix (or WeSaR's W̃).
    Matrix,
    /// A WeSaR scale α (shape `[1]`).
    Alpha,
    /// An RMSNorm gain.
    Norm,
}

pub struct Param {
    pub name: String,
    pub var: Var,
    pub kind: Kind,
    /// The transformer block this belongs to; `None` for the embedding and the final norm.
    pub block: Option<usize>,
}

/// Where a matrix sits, which decides its initial scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// q, k, v, gate, up: read the residual stream.
    Input,
    /// o, down: write into the residual stream (scaled down with depth).
    Output,
}

pub struct Params {
    pub entries: Vec<Param>,
    seed: u64,
    dtype: DType,
    device: Device,
    model: ModelConfig,
    stab: StabilityConfig,
}

impl Params {
    pub fn new(
        model: &ModelConfig,
        stab: &StabilityConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            entries: Vec::new(),
            seed,
            dtype,
            device: device.clone(),
            model: model.clone(),
            stab: stab.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.entries.iter().find(|p| p.name == name)
    }

    /// A tensor of N(0, std²) values from the stream named `name`.
    fn normal(&self, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
        let mut rng = Rng::stream(self.seed, name);
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
        Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
    }

    fn push(
        &mut self,
        name: String,
        t: Tensor,
        kind: Kind,
        block: Option<usize>,
    ) -> Result<Tensor> {
        if self.get(&name).is_some() {
            bail!("parameter {name} is defined twice");
        }
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        self.entries.push(Param {
            name,
            var,
            kind,
            block,
        });
        Ok(tensor)
    }

    /// The token embedding, `[vocab, d]`, at the scheme's base scale.
    pub fn embedding(&mut self, name: &str) -> Result<Tensor> {
        let shape = [self.model.vocab_size, self.model.d_model];
        let t = self.normal(name, &shape, self.base_std())?;
        self.push(name.into(), t, Kind::Embedding, None)
    }

    /// An RMSNorm gain of ones.
    pub fn norm(&mut self, name: &str, dim: usize, block: Option<usize>) -> Result<Tensor> {
        let t = Tensor::ones(dim, self.dtype, &self.device)?;
        self.push(name.into(), t, Kind::Norm, block)
    }

    /// A weight matrix `[out, in]`; with WeSaR also its α. Returns (W or W̃, α).
    pub fn matrix(
        &mut self,
        prefix: &str,
        shape: (usize, usize),
        role: Role,
        block: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let target = self.matrix_std(role);
        let dims = [shape.0, shape.1];
        let name = format!("{prefix}.weight");
        if !self.stab.wesar {
            let w = self.normal(&name, &dims, target)?;
            return Ok((self.push(name, w, Kind::Matrix, Some(block))?, None));
        }
        // WeSaR: a common small σ for every W̃; α starts at the scheme's ratio to its base
        // scale (YuLan-Mini: 1/√m for inputs, 1/√(2mL) for outputs), so α carries the shape.
        let w = self.normal(&name, &dims, self.stab.wesar_std)?;
        let w = self.push(name, w, Kind::Matrix, Some(block))?;
        let alpha0 = target / self.base_std();
        let a = Tensor::from_vec(vec![alpha0], 1, &self.device)?.to_dtype(self.dtype)?;
        let a = self.push(format!("{prefix}.alpha"), a, Kind::Alpha, Some(block))?;
        Ok((w, Some(a)))
    }

    /// The scheme's unit scale: what an input matrix gets at the base width.
    pub fn base_std(&self) -> f64 {
        match self.stab.init {
            InitScheme::Normal002 => 0.02,
            InitScheme::Scaled => (2.0 / (5.0 * self.model.d_model as f64)).sqrt(),
            InitScheme::Mup => (2.0 / (5.0 * self.stab.mup_base_width as f64)).sqrt(),
        }
    }

    /// µP's width ratio m = d / base width (1 outside µP).
    pub fn width_ratio(&self) -> f64 {
        match self.stab.init {
            InitScheme::Mup => self.model.d_model as f64 / self.stab.mup_base_width as f64,
            _ => 1.0,
        }
    }

    /// The standard deviation the effective matrix starts with.
    pub fn matrix_std(&self, role: Role) -> f64 {
        let depth = (2.0 * self.model.n_layers as f64).sqrt();
        let base = self.base_std() / self.width_ratio().sqrt();
        match (self.stab.init, role) {
            (InitScheme::Normal002, _) | (_, Role::Input) => base,
            (_, Role::Output) => base / depth,
        }
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|p| p.var.elem_count()).sum()
    }
}
