//! The backward pass: every parameter learns, and the gradients are the derivative of the loss.

use candle_core::{DType, Device, Tensor};
use keel_trainer::config::{InitScheme, TrainConfig};
use keel_trainer::model::{self, Model};
use keel_trainer::ops::Kernels;
use keel_trainer::params::Params;
use keel_trainer::rng::Rng;

use crate::support;

/// A model small enough for finite differences, with every optional path switched on.
fn tiny_everything() -> TrainConfig {
    let mut cfg = support::tiny();
    cfg.model.d_model = 8;
    cfg.model.n_heads = 2;
    cfg.model.n_kv_heads = Some(1);
    cfg.model.d_ffn = 12;
    cfg.model.vocab_size = 16;
    cfg.stability.qk_norm = true;
    cfg.stability.z_loss = 0.1;
    cfg
}

fn tokens(n: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<u32> = (0..n * t).map(|_| rng.below(vocab) as u32).collect();
    Tensor::from_vec(v, (n, t), &Device::Cpu).unwrap()
}

fn loss_of(m: &Model, x: &Tensor, y: &Tensor, z: f64) -> Tensor {
    let f = m.forward(x, false).unwrap();
    model::loss(&f.logits, &y.flatten_all().unwrap(), z)
        .unwrap()
        .total
}

/// A model on the CPU, which runs the fused kernels (asserted: the checks below are meant to
/// cover their backward passes, not only the composed reference's).
fn build(cfg: &TrainConfig, dtype: DType) -> (Model, Params) {
    let (m, p) = Model::new(&cfg.model, &cfg.stability, 3, dtype, &Device::Cpu).unwrap();
    assert_eq!(m.kernels(), Kernels::Fused);
    (m, p)
}

/// The gradient of every parameter, flattened, in parameter order.
fn all_grads(m: &Model, p: &Params, x: &Tensor, y: &Tensor) -> Vec<Vec<f64>> {
    let grads = loss_of(m, x, y, 0.1).backward().unwrap();
    p.entries
        .iter()
        .map(|e| {
            let g = grads.get(e.var.as_tensor()).unwrap();
            g.flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient_at_step_zero() {
    for wesar in [true, false] {
        let mut cfg = tiny_everything();
        cfg.stability.wesar = wesar;
        let (m, p) = build(&cfg, DType::F32);
        let (x, y) = (tokens(2, 6, 16, 1), tokens(2, 6, 16, 2));
        let grads = loss_of(&m, &x, &y, 0.1).backward().unwrap();
        for param in &p.entries {
            let g = grads.get(param.var.as_tensor());
            let norm = g.map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            assert!(
                norm.is_some_and(|n| n > 0.0),
                "{} (wesar {wesar}): {norm:?}",
                param.name
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_of_the_whole_model_in_f64() {
    // Normal init without WeSaR gives O(0.1) weights, so central differences with h = 1e-5
    // have truncation error ~h² and rounding ~1e-16/h: agreement to 1e-6 relative is expected.
    for (init, wesar) in [(InitScheme::Normal002, false), (InitScheme::Mup, true)] {
        let mut cfg = tiny_everything();
        cfg.stability.init = init;
        cfg.stability.wesar = wesar;
        cfg.stability.wesar_std = 0.05;
        let (m, p) = build(&cfg, DType::F64);
        let (x, y) = (tokens(2, 5, 16, 4), tokens(2, 5, 16, 5));
        let grads = loss_of(&m, &x, &y, 0.1).backward().unwrap();
        let mut rng = Rng::new(9);
        for param in &p.entries {
            let g: Vec<f64> = grads
                .get(param.var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w0: Vec<f64> = param.var.flatten_all().unwrap().to_vec1().unwrap();
            for _ in 0..3 {
                let i = rng.below(w0.len());
                let at = |delta: f64| {
                    let mut w = w0.clone();
                    w[i] += delta;
                    param
                        .var
                        .set(&Tensor::from_vec(w, param.var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_of(&m, &x, &y, 0.1).to_scalar::<f64>().unwrap()
                };
                let h = 1e-5;
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                // Relative agreement, with an absolute floor for gradients so small that the
                // loss's own rounding (~1e-16 · loss / h ≈ 1e-11) dominates the difference.
                let tolerance = 1e-6 * numeric.abs().max(g[i].abs()) + 1e-9;
                assert!(
                    (numeric - g[i]).abs() < tolerance,
                    "{} [{i}] ({init:?}): analytic {} numeric {numeric}",
                    param.name,
                    g[i]
                );
            }
        }
    }
}

#[test]
fn the_fused_and_composed_models_give_the_same_loss_and_gradients_in_f64() {
    // Sequences longer than the tiny model's, so the attention rows span several kernel blocks
    // of the softmax; every optional path on (QK-norm, grouped KV heads, WeSaR, z-loss).
    let cfg = tiny_everything();
    let (mut m, p) = build(&cfg, DType::F64);
    let (x, y) = (tokens(3, 40, 16, 6), tokens(3, 40, 16, 7));
    let fused_loss = loss_of(&m, &x, &y, 0.1).to_scalar::<f64>().unwrap();
    let fused = all_grads(&m, &p, &x, &y);
    m.set_kernels(Kernels::Composed);
    let composed_loss = loss_of(&m, &x, &y, 0.1).to_scalar::<f64>().unwrap();
    let composed = all_grads(&m, &p, &x, &y);
    assert!((fused_loss - composed_loss).abs() < 1e-12 * composed_loss.abs());
    for ((e, f), c) in p.entries.iter().zip(&fused).zip(&composed) {
        let scale = c.iter().fold(0f64, |s, v| s.max(v.abs()));
        let diff = f.iter().zip(c).fold(0f64, |s, (a, b)| s.max((a - b).abs()));
        // Only the order of floating-point sums differs between the two.
        assert!(diff <= 1e-10 * scale, "{}: {diff:e} of {scale:e}", e.name);
    }
}
