//! Each statistic of a step record against a direct computation: a plain-Rust forward pass
//! (loops over f64, no candle) of a tiny model with known weights, and norms taken by hand.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use keel_trainer::config::TrainConfig;
use keel_trainer::model;
use keel_trainer::trainer::Trainer;

use crate::support;

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
        p.var
            .set(&Tensor::from_vec(v, p.var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn host(t: &Trainer) -> HashMap<String, Vec<f64>> {
    t.params
        .entries
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.var.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
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

fn reference(cfg: &TrainConfig, w: &HashMap<String, Vec<f64>>, tokens: &[u32]) -> Reference {
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

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn each_statistic_matches_a_direct_computation_on_a_tiny_model_with_known_weights() {
    let cfg = tiny_known();
    let dir = tempfile::tempdir().unwrap();
    let mut t =
        Trainer::with_dtype(cfg.clone(), &Device::Cpu, dir.path().into(), DType::F64).unwrap();
    set_known_weights(&t);
    let (b, s) = (cfg.run.batch_size, cfg.model.seq_len);
    let batch = t.data.batch(0, b, s).unwrap();
    let before = host(&t);

    // Gradients of the same batch, grouped by the `blocks.{i}.` name prefix.
    let x = Tensor::from_vec(batch.inputs.clone(), (b, s), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(batch.targets.clone(), b * s, &Device::Cpu).unwrap();
    let f = t.model.forward(&x, false).unwrap();
    let grads = model::loss(&f.logits, &y, 0.0)
        .unwrap()
        .total
        .backward()
        .unwrap();
    let block_of = |name: &str| {
        name.strip_prefix("blocks.")
            .map(|r| r.split('.').next().unwrap().parse::<usize>().unwrap())
    };
    let mut grad_sq = vec![0.0; cfg.model.n_layers];
    for p in &t.params.entries {
        if let Some(i) = block_of(&p.name) {
            let g: Vec<f64> = grads
                .get(p.var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            grad_sq[i] += g.iter().map(|v| v * v).sum::<f64>();
        }
    }

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

    // Parameter norms before the update, and the update's relative size.
    for i in 0..cfg.model.n_layers {
        let (mut w2, mut d2) = (0.0, 0.0);
        for (name, w) in &before {
            if block_of(name) == Some(i) {
                w2 += w.iter().map(|v| v * v).sum::<f64>();
                d2 += w
                    .iter()
                    .zip(&after[name])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>();
            }
        }
        close(layer("param_norm")[i], w2.sqrt(), "param_norm");
        close(
            layer("update_ratio")[i],
            d2.sqrt() / w2.sqrt(),
            "update_ratio",
        );
    }

    // The loss is the mean cross-entropy of the plain forward's logits.
    let mut ce = 0.0;
    for (r, reference) in rows.iter().enumerate() {
        for (pos, l) in reference.logits.iter().enumerate() {
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            ce += lse - l[batch.targets[r * s + pos] as usize];
        }
    }
    close(rec.scalars["loss"].get(), ce / (b * s) as f64, "loss");
    let names: Vec<&String> = rec.scalars.keys().collect();
    for k in [
        "lr",
        "grad_norm",
        "grad_clipped",
        "z_loss",
        "tokens_per_s",
        "step_time_s",
    ] {
        assert!(rec.scalars.contains_key(k), "missing {k} in {names:?}");
    }
    assert_eq!(rec.layers.len(), keel_protocol::LAYER_STATS.len());
}
