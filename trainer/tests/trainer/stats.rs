//! Each statistic of a step record against a direct computation: a plain-Rust forward pass
//! (loops over f64, no candle) of a tiny model with known weights, and norms taken by hand —
//! with YuLan-Mini's switches off, and with WeSaR, QK-norm and z-loss on, in f64 and f32.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use keel_trainer::config::TrainConfig;
use keel_trainer::model;
use keel_trainer::trainer::Trainer;

use crate::support;

/// The switches a check runs with.
#[derive(Clone, Copy)]
struct Switches {
    wesar: bool,
    qk_norm: bool,
    z_loss: f64,
    dtype: DType,
}

const PLAIN: Switches = Switches {
    wesar: false,
    qk_norm: false,
    z_loss: 0.0,
    dtype: DType::F64,
};

fn tiny_known() -> TrainConfig {
    let mut cfg = support::tiny();
    cfg.model.d_model = 4;
    cfg.model.n_heads = 2;
    cfg.model.n_kv_heads = Some(1);
    cfg.model.d_ffn = 6;
    cfg.model.seq_len = 5;
    cfg.run.batch_size = 2;
    cfg.stability.wesar = false;
    cfg.stability.z_loss = 0.0;
    cfg
}

/// Known weights: a smooth pattern per parameter, gains near 1.
fn set_known_weights(t: &Trainer) {
    for (k, p) in t.params.entries.iter().enumerate() {
        let n = p.var.elem_count();
        let norm = p.name.contains("norm");
        let v: Vec<f64> = (0..n)
            .map(|i| {
                let s = ((i * 7 + k * 3) as f64 * 0.37).sin();
                if norm { 1.0 + 0.2 * s } else { 0.6 * s }
            })
            .collect();
        let t = Tensor::from_vec(v, p.var.shape(), &Device::Cpu).unwrap();
        p.var.set(&t.to_dtype(p.var.dtype()).unwrap()).unwrap();
    }
}

/// A tensor's values, flattened, in f64.
fn values_of(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn host(t: &Trainer) -> HashMap<String, Vec<f64>> {
    t.params
        .entries
        .iter()
        .map(|p| (p.name.clone(), values_of(p.var.as_tensor())))
        .collect()
}

/// `w` is `[out, in]` row-major.
fn linear(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let r = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v / r * g).collect()
}

fn rope(x: &mut [f64], pos: usize, theta: f64) {
    let half = x.len() / 2;
    for j in 0..half {
        let a = pos as f64 * theta.powf(-2.0 * j as f64 / x.len() as f64);
        let (x1, x2) = (x[j], x[j + half]);
        x[j] = x1 * a.cos() - x2 * a.sin();
        x[j + half] = x1 * a.sin() + x2 * a.cos();
    }
}

/// One sequence through the plain forward.
struct Reference {
    /// Per block: outputs `[t][d]` and the block's max attention logit.
    blocks: Vec<(Vec<Vec<f64>>, f64)>,
    /// `[t][vocab]`.
    logits: Vec<Vec<f64>>,
}

/// The weights as the model uses them: WeSaR's α·W̃ folded into each matrix.
fn effective(w: &HashMap<String, Vec<f64>>) -> HashMap<String, Vec<f64>> {
    let mut out = w.clone();
    for (name, a) in w {
        if let Some(prefix) = name.strip_suffix(".alpha") {
            let m = out.get_mut(&format!("{prefix}.weight")).unwrap();
            m.iter_mut().for_each(|v| *v *= a[0]);
        }
    }
    out
}

fn reference(cfg: &TrainConfig, w: &HashMap<String, Vec<f64>>, tokens: &[u32]) -> Reference {
    let w = &effective(w);
    let m = &cfg.model;
    let (d, h, hd, kvh) = (m.d_model, m.n_heads, m.head_dim(), m.kv_heads());
    let rs = 1.4 / (m.n_layers as f64).sqrt();
    let emb = &w["embed.weight"];
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|t| {
            emb[*t as usize * d..][..d]
                .iter()
                .map(|v| v * cfg.stability.emb_multiplier)
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for b in 0..m.n_layers {
        let g = |n: &str| &w[&format!("blocks.{b}.{n}")];
        let xn: Vec<_> = x
            .iter()
            .map(|r| rms_norm(r, g("attn_norm.weight"), m.norm_eps))
            .collect();
        let mut q: Vec<_> = xn.iter().map(|r| linear(g("attn.q.weight"), r)).collect();
        let mut k: Vec<_> = xn.iter().map(|r| linear(g("attn.k.weight"), r)).collect();
        let v: Vec<_> = xn.iter().map(|r| linear(g("attn.v.weight"), r)).collect();
        if cfg.stability.qk_norm {
            let (qg, kg) = (g("attn.q_norm.weight"), g("attn.k_norm.weight"));
            for r in q.iter_mut() {
                *r = r
                    .chunks(hd)
                    .flat_map(|c| rms_norm(c, qg, m.norm_eps))
                    .collect();
            }
            for r in k.iter_mut() {
                *r = r
                    .chunks(hd)
                    .flat_map(|c| rms_norm(c, kg, m.norm_eps))
                    .collect();
            }
        }
        for (pos, (qr, kr)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            qr.chunks_mut(hd).for_each(|c| rope(c, pos, m.rope_theta));
            kr.chunks_mut(hd).for_each(|c| rope(c, pos, m.rope_theta));
        }
        let mut max_logit = f64::NEG_INFINITY;
        let mut y = vec![vec![0.0; d]; x.len()];
        for head in 0..h {
            let kv = head / (h / kvh);
            for s in 0..x.len() {
                let logits: Vec<f64> = (0..=s)
                    .map(|u| {
                        (0..hd)
                            .map(|i| q[s][head * hd + i] * k[u][kv * hd + i])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                max_logit = max_logit.max(mx);
                let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (u, eu) in e.iter().enumerate() {
                    for i in 0..hd {
                        y[s][head * hd + i] += eu / z * v[u][kv * hd + i];
                    }
                }
            }
        }
        for (s, ys) in y.iter().enumerate() {
            let o = linear(g("attn.o.weight"), ys);
            x[s].iter_mut().zip(o).for_each(|(a, b)| *a += rs * b);
            let hn = rms_norm(&x[s], g("mlp_norm.weight"), m.norm_eps);
            let (gate, up) = (
                linear(g("mlp.gate.weight"), &hn),
                linear(g("mlp.up.weight"), &hn),
            );
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(a, u)| a / (1.0 + (-a).exp()) * u)
                .collect();
            let down = linear(g("mlp.down.weight"), &act);
            x[s].iter_mut().zip(down).for_each(|(a, b)| *a += rs * b);
        }
        out.push((x.clone(), max_logit));
    }
    let logits = x
        .iter()
        .map(|r| linear(emb, &rms_norm(r, &w["final_norm.weight"], m.norm_eps)))
        .collect();
    Reference {
        blocks: out,
        logits,
    }
}

fn close_within(tol: f64) -> impl Fn(f64, f64, &str) {
    move |got, want, what| {
        assert!(
            (got - want).abs() <= tol * want.abs().max(1.0),
            "{what}: got {got}, want {want}"
        );
    }
}

#[test]
fn each_statistic_matches_a_direct_computation_on_a_tiny_model_with_known_weights() {
    check_every_statistic(PLAIN);
}

#[test]
fn the_statistics_hold_with_wesar_qk_norm_and_z_loss_on_in_f64_and_f32() {
    for dtype in [DType::F64, DType::F32] {
        check_every_statistic(Switches {
            wesar: true,
            qk_norm: true,
            z_loss: 1e-2,
            dtype,
        });
    }
}

fn check_every_statistic(sw: Switches) {
    let mut cfg = tiny_known();
    cfg.stability.wesar = sw.wesar;
    cfg.stability.qk_norm = sw.qk_norm;
    cfg.stability.z_loss = sw.z_loss;
    let close = close_within(if sw.dtype == DType::F64 { 1e-9 } else { 2e-4 });
    let dir = tempfile::tempdir().unwrap();
    let mut t =
        Trainer::with_dtype(cfg.clone(), &Device::Cpu, dir.path().into(), sw.dtype).unwrap();
    set_known_weights(&t);
    let (b, s) = (cfg.run.batch_size, cfg.model.seq_len);
    let batch = t.data.batch(0, b, s).unwrap();
    let before = host(&t);

    // Gradients of the same batch, grouped by the `blocks.{i}.` name prefix.
    let x = Tensor::from_vec(batch.inputs.clone(), (b, s), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(batch.targets.clone(), b * s, &Device::Cpu).unwrap();
    let f = t.model.forward(&x, false).unwrap();
    let grads = model::loss(&f.logits, &y, sw.z_loss)
        .unwrap()
        .total
        .backward()
        .unwrap();
    let block_of = |name: &str| {
        name.strip_prefix("blocks.")
            .map(|r| r.split('.').next().unwrap().parse::<usize>().unwrap())
    };
    let mut grad_sq = vec![0.0; cfg.model.n_layers];
    let mut global_sq = 0.0;
    let mut grad_of = HashMap::new();
    for p in &t.params.entries {
        let g = values_of(grads.get(p.var.as_tensor()).unwrap());
        let sq = g.iter().map(|v| v * v).sum::<f64>();
        global_sq += sq;
        if let Some(i) = block_of(&p.name) {
            grad_sq[i] += sq;
        }
        grad_of.insert(p.name.clone(), g);
    }
    // Clip at half the norm: the step must say it clipped, and feed Adam the halved gradient.
    let global_norm = global_sq.sqrt();
    t.state.grad_clip = global_norm / 2.0;

    let rec = t.step().unwrap();
    let after = host(&t);
    let layer = |k: &str| rec.layers[k].iter().map(|m| m.get()).collect::<Vec<_>>();

    // Residual-stream and attention statistics from the plain forward of both rows.
    let rows: Vec<_> = (0..b)
        .map(|r| reference(&cfg, &before, &batch.inputs[r * s..][..s]))
        .collect();
    for (i, block_grad_sq) in grad_sq.iter().enumerate() {
        let tokens: Vec<&Vec<f64>> = rows.iter().flat_map(|r| r.blocks[i].0.iter()).collect();
        let n = tokens.len() as f64;
        let var = tokens
            .iter()
            .map(|r| {
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r.len() as f64
            })
            .sum::<f64>()
            / n;
        let ms = tokens
            .iter()
            .map(|r| r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64)
            .sum::<f64>()
            / n;
        let absmax = tokens
            .iter()
            .flat_map(|r| r.iter())
            .fold(0.0f64, |a, v| a.max(v.abs()));
        let logit_max = rows
            .iter()
            .map(|r| r.blocks[i].1)
            .fold(f64::NEG_INFINITY, f64::max);
        close(layer("hidden_var")[i], var, "hidden_var");
        close(layer("hidden_rms")[i], ms.sqrt(), "hidden_rms");
        close(layer("act_absmax")[i], absmax, "act_absmax");
        close(layer("attn_logit_max")[i], logit_max, "attn_logit_max");
        close(layer("grad_norm")[i], block_grad_sq.sqrt(), "grad_norm");
    }

    // Parameter norms of the effective matrices (α·W̃) before the update, the update's
    // relative size, and the RMS of the block's norm gains, apart.
    let (eff_before, eff_after) = (effective(&before), effective(&after));
    for i in 0..cfg.model.n_layers {
        let (mut w2, mut d2, mut g2, mut gn) = (0.0, 0.0, 0.0, 0.0);
        for (name, w) in &eff_before {
            if block_of(name) != Some(i) || name.ends_with(".alpha") {
                continue;
            }
            if name.contains("norm") {
                g2 += w.iter().map(|v| v * v).sum::<f64>();
                gn += w.len() as f64;
                continue;
            }
            w2 += w.iter().map(|v| v * v).sum::<f64>();
            d2 += w
                .iter()
                .zip(&eff_after[name])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>();
        }
        close(layer("param_norm")[i], w2.sqrt(), "param_norm");
        close(
            layer("update_ratio")[i],
            d2.sqrt() / w2.sqrt(),
            "update_ratio",
        );
        close(layer("norm_gain")[i], (g2 / gn).sqrt(), "norm_gain");
    }

    // The global gradient norm is taken before clipping, over every parameter.
    close(rec.scalars["grad_norm"].get(), global_norm, "grad_norm");
    assert_eq!(rec.scalars["grad_clipped"].get(), 1.0);
    // Adam's first moment after one step is (1 − β1)·g·(clip / norm).
    let moments = t.opt.state_tensors();
    for (name, g) in &grad_of {
        let m = values_of(&moments[&format!("m.{name}")]);
        for (m, g) in m.iter().zip(g) {
            let want = (1.0 - cfg.optim.beta1) * g * 0.5;
            assert!(
                (m - want).abs() <= 1e-3 * want.abs() + 1e-12,
                "{name}: m {m}, want {want}"
            );
        }
    }

    // The loss is the mean cross-entropy of the plain forward's logits.
    // The z-loss term is ζ·mean(logsumexp²) of the same logits.
    let (mut ce, mut lse_sq) = (0.0, 0.0);
    for (r, reference) in rows.iter().enumerate() {
        for (pos, l) in reference.logits.iter().enumerate() {
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            ce += lse - l[batch.targets[r * s + pos] as usize];
            lse_sq += lse * lse;
        }
    }
    let n = (b * s) as f64;
    close(rec.scalars["loss"].get(), ce / n, "loss");
    close(
        rec.scalars["z_loss"].get(),
        sw.z_loss * lse_sq / n,
        "z_loss",
    );
    let names: Vec<&String> = rec.scalars.keys().collect();
    for k in ["lr", "tokens_per_s", "step_time_s"] {
        assert!(rec.scalars.contains_key(k), "missing {k} in {names:?}");
    }
    assert_eq!(rec.layers.len(), keel_protocol::LAYER_STATS.len());
}
