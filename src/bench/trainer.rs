//! `keel bench trainer`: what a training step costs on one device, in one dtype — tokens/s,
//! MFU against a peak the caller names, what the per-layer statistics add, the device→host
//! reads per step, the peak memory — and how far its losses are from the same steps on the
//! CPU. `scripts/gpu-check.sh` runs it on a GPU; it runs on the CPU as well.
//!
//! Steps with the statistics on and off alternate, so a busy machine slows both alike; the
//! figures are medians. The statistics do not change training, so one run gives both.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use keel_trainer::config::{Precision, TrainConfig};
use keel_trainer::stats::HOST_READS;
use keel_trainer::trainer::Trainer;
use keel_trainer::{device, memory};

use super::median;

#[derive(clap::Args, Clone, Debug)]
pub struct TrainerBenchArgs {
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A built-in config or a config file.
    #[arg(long, default_value = "proxy-small")]
    pub config: PathBuf,
    /// Timed steps (half with the statistics on, half off, alternating).
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// `f32`, `tf32` or `bf16` (default: the config's).
    #[arg(long, value_parser = parse_precision)]
    pub dtype: Option<Precision>,
    /// Also train this many steps in f32 here and on the CPU from the same start, and report
    /// how far apart the losses are (0: skip; the CPU is slow for large proxies).
    #[arg(long, default_value_t = 0)]
    pub agree_steps: u64,
    /// The device's peak dense TFLOP/s in this dtype, for MFU (H100/H200 SXM: f32 67, tf32
    /// 495, bf16 989); without it MFU is not shown.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(format!("`{s}` is not f32, tf32 or bf16")),
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

/// Training FLOPs per token: 6 per parameter (forward and backward; the tied embedding counts
/// once, as the output head's product) plus the attention's 12·L·d·t.
fn flops_per_token(cfg: &TrainConfig, params: usize, seq_len: usize) -> f64 {
    let m = &cfg.model;
    6.0 * params as f64 + 12.0 * (m.n_layers * m.d_model * seq_len) as f64
}

fn losses(mut t: Trainer, steps: u64) -> anyhow::Result<Vec<f64>> {
    (0..steps)
        .map(|_| Ok(t.step()?.scalars["loss"].get()))
        .collect()
}

/// The largest |a − b| / |a| over the steps.
fn max_rel_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) / x).abs())
        .fold(0.0, f64::max)
}

pub fn run(args: TrainerBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.steps >= 2,
        "--steps must be at least 2 (half with the statistics on, half off)"
    );
    let dev = device::parse(&args.device)?;
    let mut cfg = keel_trainer::load_config(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(d) = args.dtype {
        cfg.run.dtype = d;
    }
    // Nothing but steps: no validation passes inside the timed ones.
    cfg.eval.every = 0;
    let tmp = tempfile::tempdir()?;
    let mut t = Trainer::new(cfg.clone(), &dev, tmp.path().join("timed"))?;
    let (b, s) = (cfg.run.batch_size, cfg.model.seq_len);
    for _ in 0..5 {
        t.step()?;
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut reads_on, mut reads_off) = (0u64, 0u64);
    let mut peak = memory::device_used_bytes(&dev).unwrap_or(0);
    for i in 0..args.steps {
        let stats = i % 2 == 0;
        t.cfg.stats.every = if stats { 1 } else { u64::MAX };
        let before = HOST_READS.load(Ordering::Relaxed);
        let rec = t.step()?;
        let reads = HOST_READS.load(Ordering::Relaxed) - before;
        let secs = rec.scalars["step_time_s"].get();
        if stats {
            on.push(secs);
            reads_on += reads;
        } else {
            off.push(secs);
            reads_off += reads;
        }
        peak = peak.max(memory::device_used_bytes(&dev).unwrap_or(0));
    }
    let (n_on, n_off) = (on.len().max(1) as f64, off.len().max(1) as f64);
    let (t_on, t_off) = (median(on), median(off));
    let tokens_per_s = (b * s) as f64 / t_on;
    let flops = flops_per_token(&cfg, t.params.count(), s);
    let mfu = args
        .peak_tflops
        .map(|p| format!("{:.1} %", 100.0 * tokens_per_s * flops / (p * 1e12)))
        .unwrap_or_else(|| "n/a".into());
    let agreement = if args.agree_steps > 0 {
        let mut f32_cfg = cfg.clone();
        f32_cfg.run.dtype = Precision::F32;
        let here = losses(
            Trainer::new(f32_cfg.clone(), &dev, tmp.path().join("here"))?,
            args.agree_steps,
        )?;
        let cpu = losses(
            Trainer::new(f32_cfg, &device::parse("cpu")?, tmp.path().join("cpu"))?,
            args.agree_steps,
        )?;
        let mut text = format!(
            "f32 vs CPU over {} steps: {:.2e}",
            args.agree_steps,
            max_rel_gap(&cpu, &here)
        );
        if cfg.run.dtype != Precision::F32 {
            let low = losses(
                Trainer::new(cfg.clone(), &dev, tmp.path().join("low"))?,
                args.agree_steps,
            )?;
            text.push_str(&format!(
                "; {} vs f32: {:.2e}",
                precision_name(cfg.run.dtype),
                max_rel_gap(&here, &low)
            ));
        }
        text
    } else {
        "—".into()
    };
    println!(
        "| config | device | dtype | batch × seq | params | tokens/s | MFU | statistics' cost | \
         host reads per step (stats on / off) | peak memory | loss gap (max relative) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {b} × {s} | {:.2} M | {:.0} | {mfu} | {:+.1} % | {:.2} / {:.2} | {} | {agreement} |",
        cfg.run.name,
        args.device,
        precision_name(cfg.run.dtype),
        t.params.count() as f64 / 1e6,
        tokens_per_s,
        100.0 * (t_on / t_off - 1.0),
        reads_on as f64 / n_on,
        reads_off as f64 / n_off,
        memory::human(peak),
    );
    Ok(())
}
