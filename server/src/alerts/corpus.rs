//! A labelled corpus for the spike detectors: generated loss curves whose true spikes are
//! known, and how the detector scores on them (found, missed, false alerts per 10,000 steps).
//! The alert tests hold the detector to its budgets on it, and `keel bench alerts` prints the
//! score.
//!
//! A curve has a fast warmup fall, a slow decay, an LR drop at 60 % (loss down 5 %) and a
//! data-mix switch at 80 % (loss up 8 %, settling back), with independent multiplicative
//! batch noise of σ from 1 % (large batches) to 15 % (a small batch on a mixed corpus).
//! Spikes are injected as `k` × σ on the log scale.

use keel_protocol::{Metric, StepRecord};

use super::{Detector, Thresholds};

/// Deterministic normal noise (xorshift and Box–Muller).
pub struct Noise(pub u64);

impl Noise {
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

/// One labelled series: its values and the steps of its true spikes.
pub struct Series {
    pub label: String,
    pub values: Vec<f64>,
    pub spikes: Vec<u64>,
}

/// A loss curve of `n` steps with noise `sigma` and spikes `(step, k σ)`.
pub fn loss_curve(n: u64, sigma: f64, seed: u64, spikes: &[(u64, f64)]) -> Vec<f64> {
    let mut noise = Noise(seed);
    let nf = n as f64;
    (0..n)
        .map(|t| {
            let tf = t as f64;
            let mut level = 2.0 + 8.0 * (-tf / (nf / 12.0)).exp();
            if tf > 0.6 * nf {
                level *= 1.0 - 0.05 * (1.0 - (-(tf - 0.6 * nf) / 200.0).exp());
            }
            if tf > 0.8 * nf {
                level *= 1.0 + 0.08 * (-(tf - 0.8 * nf) / 500.0).exp();
            }
            let bump = spikes
                .iter()
                .find(|(s, _)| *s == t)
                .map_or(0.0, |(_, k)| k * sigma);
            level * (sigma * noise.normal() + bump).exp()
        })
        .collect()
}

const NOISE: [f64; 5] = [0.01, 0.03, 0.05, 0.08, 0.15];

/// Twenty healthy curves of 10,000 steps: four seeds at each noise level.
pub fn healthy_losses() -> Vec<Series> {
    let mut out = Vec::new();
    for (i, sigma) in NOISE.into_iter().enumerate() {
        for seed in 1..=4u64 {
            out.push(Series {
                label: format!("healthy, σ {sigma}"),
                values: loss_curve(10_000, sigma, seed * 7919 + i as u64, &[]),
                spikes: Vec::new(),
            });
        }
    }
    out
}

/// Curves with twelve spikes each, of 6, 9, 12 and 15 σ, one curve per noise level.
pub fn spiked_losses() -> Vec<Series> {
    let spikes: Vec<(u64, f64)> = (1..=12)
        .map(|i| (i * 700 + 123, 6.0 + (i % 4) as f64 * 3.0))
        .collect();
    NOISE
        .into_iter()
        .map(|sigma| Series {
            label: format!("spiked, σ {sigma}"),
            values: loss_curve(10_000, sigma, 42, &spikes),
            spikes: spikes.iter().map(|(s, _)| *s).collect(),
        })
        .collect()
}

/// How the loss-spike detector did over a set of series.
#[derive(Debug, Default)]
pub struct Score {
    pub steps: u64,
    pub injected: usize,
    pub found: usize,
    /// (series label, step) of true spikes not alerted at their step.
    pub missed: Vec<(String, u64)>,
    /// (series label, step) of alerts at no true spike.
    pub false_alerts: Vec<(String, u64)>,
}

impl Score {
    pub fn false_per_10k(&self) -> f64 {
        self.false_alerts.len() as f64 * 10_000.0 / self.steps.max(1) as f64
    }
}

/// Runs a fresh detector (default thresholds) over each series' losses.
pub fn score(series: Vec<Series>) -> Score {
    let mut score = Score::default();
    for s in series {
        let mut d = Detector::new(Thresholds::default());
        let mut alerts = Vec::new();
        for (t, v) in s.values.iter().enumerate() {
            let record = StepRecord {
                step: t as u64,
                time: None,
                tokens: None,
                scalars: [("loss".to_string(), Metric(*v))].into(),
                layers: Default::default(),
            };
            let fired = d.observe(&record);
            alerts.extend(
                fired
                    .iter()
                    .filter(|a| a.name == "loss_spike")
                    .map(|a| a.step),
            );
        }
        score.steps += s.values.len() as u64;
        score.injected += s.spikes.len();
        for at in &s.spikes {
            match alerts.contains(at) {
                true => score.found += 1,
                false => score.missed.push((s.label.clone(), *at)),
            }
        }
        for a in alerts.into_iter().filter(|a| !s.spikes.contains(a)) {
            score.false_alerts.push((s.label.clone(), a));
        }
    }
    score
}
