//! Where a step's time goes, and what the statistics add to each phase:
//! `cargo run --release -p keel-trainer --example phases -- configs/proxy-small.toml`.
//! Each measurement alternates "off" and "on" several times so machine noise shows as spread.

use std::time::Instant;

use candle_core::{Device, Tensor};
use keel_trainer::optim::GradScale;
use keel_trainer::trainer::Trainer;
use keel_trainer::{load_config, model, stats};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("configs/proxy-small.toml".into());
    let cfg = load_config(path.as_ref())?;
    let mut t = Trainer::new(
        cfg.clone(),
        &Device::Cpu,
        std::env::temp_dir().join("keel-phases"),
    )?;
    for _ in 0..3 {
        t.step()?;
    }
    let (b, s) = (cfg.run.batch_size, cfg.model.seq_len);
    let batch = t.data.batch(99, b, s)?;
    let x = Tensor::from_vec(batch.inputs, (b, s), &Device::Cpu)?;
    let y = Tensor::from_vec(batch.targets, b * s, &Device::Cpu)?;
    let groups = stats::block_groups(&t.params, cfg.model.n_layers);
    let w: Vec<Tensor> = t
        .params
        .entries
        .iter()
        .map(|p| p.var.as_tensor().clone())
        .collect();
    for _ in 0..3 {
        let start = Instant::now();
        stats::Transfer::default().read()?;
        let mut out = stats::Transfer::default();
        out.push_scalars(&stats::group_sq_norms(&groups, &w)?)?;
        out.read()?;
        let grouped = ms(start);
        let start = Instant::now();
        let mut out = stats::Transfer::default();
        out.push_scalars(&stats::sq_norms(w.iter())?)?;
        out.read()?;
        println!(
            "norms of all weights: grouped {grouped:.2} ms, per parameter {:.2} ms",
            ms(start)
        );
    }
    for on in [false, true, false, true, false, true] {
        let start = Instant::now();
        let f = t.model.forward(&x, on)?;
        let l = model::loss(&f.logits, &y, cfg.stability.z_loss)?;
        l.ce.to_scalar::<f32>()?;
        if let Some(taps) = f.taps {
            let mut out = stats::Transfer::default();
            stats::TapValues::push(&taps, &mut out)?;
            out.read()?;
        }
        let fwd = ms(start);
        let start = Instant::now();
        let g = l.total.backward()?;
        let bwd = ms(start);
        let start = Instant::now();
        let weights = |t: &Trainer| -> Vec<Tensor> {
            t.params
                .entries
                .iter()
                .map(|p| p.var.as_tensor().clone())
                .collect()
        };
        let before = if on {
            stats::group_flat(&groups, &weights(&t))?
        } else {
            Vec::new()
        };
        let grads: Vec<Tensor> = t
            .params
            .entries
            .iter()
            .map(|p| g.get(p.var.as_tensor()).unwrap().detach())
            .collect();
        t.opt.step(&t.params, &grads, 1e-3, &GradScale::Host(1.0))?;
        if on {
            let after = stats::group_flat(&groups, &weights(&t))?;
            let mut out = stats::Transfer::default();
            out.push_scalars(&stats::sq_norms(before.iter())?)?;
            out.push_scalars(&stats::diff_sq_norms(&after, &before)?)?;
            out.read()?;
        }
        let opt = ms(start);
        println!(
            "statistics {on:>5}: forward {fwd:6.1} ms  backward {bwd:6.1} ms  optimizer {opt:5.1} ms"
        );
    }
    Ok(())
}
