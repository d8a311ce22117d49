//! µP, depth-µP and WeSaR against their formulas: every initial standard deviation, every α₀,
//! each parameter group's LR multiplier and weight decay (read off a real AdamW update), and
//! the ladder's rungs differing the way YuLan-Mini's report says they do.
//!
//! The formulas are written out here from the report (arXiv 2412.17743, §3.2 and Table 3),
//! not taken from the trainer: σ_base = √(2/(5·d_base)), m = d/d_base; q, k, v, gate and up
//! start at σ_base²/m, o and down at σ_base²/(2·m·L); WeSaR writes each matrix as α·W̃ with W̃
//! at a common small σ and α₀ the ratio of the target to σ_base (1/√m, 1/√(2mL)).

use std::path::Path;

use candle_core::{DType, Device};
use keel_trainer::config::{InitScheme, TrainConfig};
use keel_trainer::model::Model;
use keel_trainer::optim::AdamW;
use keel_trainer::params::{Kind, Params};

use crate::support;

/// A model wide enough that sample standard deviations are within 2 % of the truth.
fn wide(init: InitScheme, wesar: bool) -> TrainConfig {
    let mut cfg = support::tiny();
    cfg.model.d_model = 128;
    cfg.model.d_ffn = 320;
    cfg.model.n_layers = 3;
    cfg.model.n_heads = 4;
    cfg.stability.init = init;
    cfg.stability.mup_base_width = 32;
    cfg.stability.wesar = wesar;
    cfg
}

fn params(cfg: &TrainConfig) -> (Model, Params) {
    Model::new(&cfg.model, &cfg.stability, 7, DType::F64, &Device::Cpu).unwrap()
}

fn values(p: &Params, name: &str) -> Vec<f64> {
    let p = p.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
    p.var.flatten_all().unwrap().to_vec1().unwrap()
}

fn std_of(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

fn near(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: got {got}, want {want}"
    );
}

const INPUTS: [&str; 5] = ["attn.q", "attn.k", "attn.v", "mlp.gate", "mlp.up"];
const OUTPUTS: [&str; 2] = ["attn.o", "mlp.down"];

/// (σ of the embedding, σ of an input matrix, σ of an output matrix) by the report's formulas.
fn expected_stds(init: InitScheme, d: f64, base: f64, layers: f64) -> (f64, f64, f64) {
    match init {
        InitScheme::Normal002 => (0.02, 0.02, 0.02),
        InitScheme::Scaled => {
            let s = (2.0 / (5.0 * d)).sqrt();
            (s, s, s / (2.0 * layers).sqrt())
        }
        InitScheme::Mup => {
            let s = (2.0 / (5.0 * base)).sqrt();
            let m = d / base;
            (s, s / m.sqrt(), s / (2.0 * m * layers).sqrt())
        }
    }
}

#[test]
fn every_initial_standard_deviation_follows_its_scheme() {
    for init in [InitScheme::Normal002, InitScheme::Scaled, InitScheme::Mup] {
        let cfg = wide(init, false);
        let (_, p) = params(&cfg);
        let (emb, input, output) = expected_stds(init, 128.0, 32.0, 3.0);
        near(std_of(&values(&p, "embed.weight")), emb, 0.02, "embedding");
        for i in 0..3 {
            for m in INPUTS {
                let v = values(&p, &format!("blocks.{i}.{m}.weight"));
                near(std_of(&v), input, 0.02, &format!("{init:?} {m}"));
            }
            for m in OUTPUTS {
                let v = values(&p, &format!("blocks.{i}.{m}.weight"));
                near(std_of(&v), output, 0.02, &format!("{init:?} {m}"));
            }
            for n in ["attn_norm", "mlp_norm"] {
                let v = values(&p, &format!("blocks.{i}.{n}.weight"));
                assert!(v.iter().all(|g| *g == 1.0), "{n} starts at 1");
            }
        }
    }
    // µP's point: the input matrices' variance falls as 1/m with the width.
    let narrow = {
        let mut c = wide(InitScheme::Mup, false);
        c.model.d_model = 32;
        c.model.n_heads = 1;
        c.model.d_ffn = 80;
        c
    };
    let ratio = std_of(&values(&params(&narrow).1, "blocks.0.mlp.up.weight"))
        / std_of(&values(
            &params(&wide(InitScheme::Mup, false)).1,
            "blocks.0.mlp.up.weight",
        ));
    near(ratio, 2.0, 0.03, "σ(d=32)/σ(d=128) = √m");
}

#[test]
fn wesar_starts_every_w_tilde_small_and_every_alpha_at_the_schemes_ratio() {
    for init in [InitScheme::Normal002, InitScheme::Scaled, InitScheme::Mup] {
        let cfg = wide(init, true);
        let (_, p) = params(&cfg);
        let (emb, input, output) = expected_stds(init, 128.0, 32.0, 3.0);
        for i in 0..3 {
            for (names, target) in [(&INPUTS[..], input), (&OUTPUTS[..], output)] {
                for m in names {
                    let w = values(&p, &format!("blocks.{i}.{m}.weight"));
                    near(std_of(&w), 5e-5, 0.02, &format!("{init:?} W̃ of {m}"));
                    let alpha = values(&p, &format!("blocks.{i}.{m}.alpha"));
                    // α₀ = target σ / σ_base: 1/√m and 1/√(2mL) under µP (YuLan-Mini: 0.365 and
                    // 0.0345 at m = 7.5, L = 56).
                    near(
                        alpha[0],
                        target / emb,
                        1e-12,
                        &format!("{init:?} α₀ of {m}"),
                    );
                }
            }
        }
    }
    let (_, p) = params(&wide(InitScheme::Mup, true));
    near(values(&p, "blocks.0.attn.q.alpha")[0], 0.5, 1e-12, "1/√4");
    near(
        values(&p, "blocks.0.mlp.down.alpha")[0],
        1.0 / 24f64.sqrt(),
        1e-12,
        "1/√(2·4·3)",
    );
}

#[test]
fn each_parameter_group_has_its_lr_multiplier_and_weight_decay() {
    let cases = [
        (InitScheme::Mup, true, 0.25),
        (InitScheme::Mup, false, 1.0),
        (InitScheme::Scaled, true, 1.0),
        (InitScheme::Normal002, true, 1.0),
    ];
    for (init, mup_lr, matrix_lr) in cases {
        for decay_embedding in [false, true] {
            let mut cfg = wide(init, true);
            cfg.optim.mup_lr = mup_lr;
            cfg.optim.decay_embedding = decay_embedding;
            let (_, p) = params(&cfg);
            let opt = AdamW::new(&cfg.optim, &cfg.stability, &p).unwrap();
            for param in &p.entries {
                let want = match param.kind {
                    Kind::Matrix => (matrix_lr, 0.1),
                    Kind::Embedding if decay_embedding => (1.0, 0.1),
                    Kind::Embedding | Kind::Alpha | Kind::Norm => (1.0, 0.0),
                };
                assert_eq!(opt.group(param), want, "{init:?} {}", param.name);
            }
        }
    }
}

/// Adam's first update is lr·sign(g) per element (m̂/√v̂ = g/|g|), plus the coupled decay
/// lr·λ·w: so one real step shows each group's LR and decay.
#[test]
fn one_real_update_moves_each_group_by_its_own_lr_and_decay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = wide(InitScheme::Mup, false);
    cfg.model.n_layers = 2;
    cfg.optim.grad_clip = 0.0;
    cfg.optim.lr = 0.01;
    cfg.optim.weight_decay = 0.5;
    cfg.schedule.warmup_steps = 0;
    let mut t = support::trainer_f64(cfg, dir.path());
    let before: Vec<(String, Vec<f64>)> = t
        .params
        .entries
        .iter()
        .map(|p| (p.name.clone(), values(&t.params, &p.name)))
        .collect();
    t.step().unwrap();
    for (name, w0) in &before {
        let (lr, wd) = match t.params.get(name).unwrap().kind {
            Kind::Matrix => (0.01 / 4.0, 0.5),
            _ => (0.01, 0.0),
        };
        let w1 = values(&t.params, name);
        for (a, b) in w0.iter().zip(&w1) {
            // w1 = w0 − lr·sign(g) − lr·λ·w0, within what ε = 1e-15 takes off the tiniest
            // gradients (an embedding row of a token the batch lacks has none: it stays).
            let adam = a - b - lr * wd * a;
            assert!(
                (adam.abs() - lr).abs() < 1e-4 * lr || adam == 0.0,
                "{name}: Adam moved {adam}, want ±{lr}"
            );
        }
    }
}

#[test]
fn mup_logits_divides_the_output_logits_by_the_width_ratio() {
    let mut cfg = wide(InitScheme::Mup, false);
    let tokens =
        candle_core::Tensor::from_vec(vec![1u32, 5, 9, 200], (1, 4), &Device::Cpu).unwrap();
    let logits = |cfg: &TrainConfig| -> Vec<f64> {
        let (m, _) = params(cfg);
        let f = m.forward(&tokens, false).unwrap();
        f.logits.flatten_all().unwrap().to_vec1().unwrap()
    };
    let plain = logits(&cfg);
    cfg.stability.mup_logits = true;
    let scaled = logits(&cfg);
    for (p, s) in plain.iter().zip(&scaled) {
        assert!((p / 4.0 - s).abs() <= 1e-12 * p.abs().max(1e-30));
    }
}

fn ladder() -> Vec<(String, TrainConfig)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/ablations/yulan-ladder.toml");
    keel_trainer::load_grid(&path).unwrap()
}

#[test]
fn the_ladders_rungs_differ_the_way_the_report_says() {
    let rungs = ladder();
    let get = |n: &str| &rungs.iter().find(|(v, _)| v == n).unwrap().1;
    // The baseline is a plain baseline: HF init, no embedding multiplier, no µP anything.
    let base = get("1-baseline");
    assert_eq!(base.stability.init, InitScheme::Normal002);
    assert_eq!(base.stability.emb_multiplier, 1.0);
    assert!(!base.stability.wesar && !base.stability.depth_mup);
    for (name, cfg) in &rungs {
        let (model, p) = params(cfg);
        let opt = AdamW::new(&cfg.optim, &cfg.stability, &p).unwrap();
        let q = p.get("blocks.0.attn.q.weight").unwrap();
        let (lr_mult, _) = opt.group(q);
        let mup = name.as_str() >= "4";
        // From the µP rung on, the width ratio moves the matrices' LR: m = 64/16 = 4.
        assert_eq!(p.width_ratio(), if mup { 4.0 } else { 1.0 }, "{name}");
        assert_eq!(lr_mult, if mup { 0.25 } else { 1.0 }, "{name}");
        assert_eq!(
            cfg.stability.emb_multiplier,
            if mup { 10.0 } else { 1.0 },
            "{name}"
        );
        // Depth-µP scales the residual branches by 1.4/√12 from rung 5.
        let want = if name.as_str() >= "5" {
            1.4 / 12f64.sqrt()
        } else {
            1.0
        };
        assert_eq!(model.residual_scale(), want, "{name}");
        // WeSaR (rung 6) puts the scale into α: 1/√m = 0.5 for q.
        match p.get("blocks.0.attn.q.alpha") {
            Some(a) => {
                assert!(name.starts_with('6'), "{name} has α");
                let a: Vec<f64> = a.var.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(a[0], 0.5);
            }
            None => assert!(!name.starts_with('6'), "{name} lacks α"),
        }
    }
}

#[test]
fn the_yulan_proxy_has_the_reports_shape_and_vocabulary() {
    let cfg = keel_trainer::load_config(Path::new("yulan-proxy-0.05b")).unwrap();
    assert_eq!(cfg.run.dtype, keel_trainer::config::Precision::Bf16);
    let (_, p) = Model::new(&cfg.model, &cfg.stability, 1, DType::F32, &Device::Cpu).unwrap();
    // 99,000 × 256 tied embedding, 32 blocks of d 256 and FFN 640: the 0.05B proxy.
    assert_eq!(p.get("embed.weight").unwrap().var.dims(), [99_000, 256]);
    assert_eq!(p.count(), 49_478_112);
    assert_eq!(p.width_ratio(), 1.0);
}
