//! A labelled corpus for the spike detectors, and how the detectors score on it (found,
//! missed, false alerts per 10,000 steps). The alert tests hold the detectors to their
//! budgets on it, and `keel bench alerts` prints the score.
//!
//! - Generated losses: a fast warmup fall, a slow decay, an LR drop at 60 % (loss down 5 %)
//!   and a data-mix switch at 80 % (loss up 8 %, settling back), with independent
//!   multiplicative batch noise of σ from 1 % (large batches) to 15 % (a small batch on a
//!   mixed corpus). A spike of `k` σ is a value `k` σ above the level (log scale), for one
//!   step.
//! - Generated grad norms: a fall through warmup to a slow drift, log-normal noise of σ from
//!   5 % to 30 %, and now and then one batch's lone outlier (2.7–20×, as a batch of rare
//!   tokens gives; clipping bounds its update) that is not a spike. Spikes are `k` σ for two
//!   to four steps.
//! - Real runs (`alerts/runs/*.csv`: step, loss, grad norm, depth ratio, top attention
//!   logit): keel runs whose losses and grad norms are healthy, so every spike alert on them
//!   is false — the demo's 2,000 steps and the stability grid's two variants, of which the
//!   unstable one must raise its depth alert and the others none.

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

/// One labelled series: the scalar it is (`loss` or `grad_norm`), its values from step 0,
/// and the steps of its true spikes.
pub struct Series {
    pub label: String,
    pub scalar: &'static str,
    pub values: Vec<f64>,
    pub spikes: Vec<u64>,
}

impl Series {
    /// The alert that says this series spiked.
    pub fn alert(&self) -> &'static str {
        match self.scalar {
            "grad_norm" => "grad_norm_spike",
            _ => "loss_spike",
        }
    }
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
            // A spike of k σ rises exactly that far above the level.
            let step_noise = sigma * noise.normal();
            let spike = spikes.iter().find(|(s, _)| *s == t);
            level * spike.map_or(step_noise, |(_, k)| k * sigma).exp()
        })
        .collect()
}

const NOISE: [f64; 5] = [0.01, 0.03, 0.05, 0.08, 0.15];

/// Twenty healthy curves of 10,000 steps: four seeds at each noise level.
pub fn healthy_losses() -> Vec<Series> {
    healthy("loss", &NOISE, 7919, |sigma, seed| {
        loss_curve(10_000, sigma, seed, &[])
    })
}

/// Four healthy curves of `scalar` at each noise level, one per seed (`seed × step + level`).
fn healthy(
    scalar: &'static str,
    noise: &[f64],
    step: u64,
    curve: impl Fn(f64, u64) -> Vec<f64>,
) -> Vec<Series> {
    let mut out = Vec::new();
    for (i, &sigma) in noise.iter().enumerate() {
        for seed in 1..=4u64 {
            out.push(Series {
                label: format!("healthy {}, σ {sigma}", scalar.replace('_', " ")),
                scalar,
                values: curve(sigma, seed * step + i as u64),
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
            label: format!("spiked loss, σ {sigma}"),
            scalar: "loss",
            values: loss_curve(10_000, sigma, 42, &spikes),
            spikes: spikes.iter().map(|(s, _)| *s).collect(),
        })
        .collect()
}

/// A grad-norm curve of `n` steps with noise `sigma`, lone outliers now and then (none
/// within 20 steps of a spike), and spikes `(step, k σ, steps)`.
pub fn grad_curve(n: u64, sigma: f64, seed: u64, spikes: &[(u64, f64, u64)]) -> Vec<f64> {
    let mut noise = Noise(seed);
    let mut outliers = Noise(seed ^ 0x5DEE_CE66);
    let nf = n as f64;
    (0..n)
        .map(|t| {
            let tf = t as f64;
            // Down through warmup, then a slow drift up; 10 % lower after the LR drop.
            let mut level = 0.3 + 1.2 * (-tf / (nf / 40.0)).exp() + 0.1 * tf / nf;
            if tf > 0.6 * nf {
                level *= 0.9;
            }
            let near_spike = spikes.iter().any(|(s, _, _)| t + 20 >= *s && t <= s + 20);
            let (u, size) = (outliers.uniform(), outliers.uniform());
            let lone = if u < 0.002 && !near_spike {
                1.0 + 2.0 * size
            } else {
                0.0
            };
            let step_noise = sigma * noise.normal();
            let spike = spikes.iter().find(|(s, _, len)| (*s..s + len).contains(&t));
            level * spike.map_or(step_noise + lone, |(_, k, _)| k * sigma).exp()
        })
        .collect()
}

const GRAD_NOISE: [f64; 4] = [0.05, 0.1, 0.2, 0.3];

/// Sixteen healthy grad-norm curves of 10,000 steps, with their lone outliers.
pub fn healthy_grad_norms() -> Vec<Series> {
    healthy("grad_norm", &GRAD_NOISE, 104_729, |sigma, seed| {
        grad_curve(10_000, sigma, seed, &[])
    })
}

/// Grad-norm curves with twelve spikes each, of 6–15 σ lasting 2–4 steps.
pub fn spiked_grad_norms() -> Vec<Series> {
    let spikes: Vec<(u64, f64, u64)> = (1..=12)
        .map(|i| (i * 700 + 211, 6.0 + (i % 4) as f64 * 3.0, 2 + i % 3))
        .collect();
    GRAD_NOISE
        .into_iter()
        .map(|sigma| Series {
            label: format!("spiked grad norm, σ {sigma}"),
            scalar: "grad_norm",
            values: grad_curve(10_000, sigma, 43, &spikes),
            spikes: spikes.iter().map(|(s, _, _)| *s).collect(),
        })
        .collect()
}

/// The real runs of the corpus: (name, the depth alert it must raise if any, CSV from step
/// 0 with the columns `step`, `loss`, `grad_norm`, `depth_ratio` (the deep half's median
/// `hidden_var` over the first layer's) and `attn_logit_max` (the top layer's)), recorded by
/// `scripts/record-alert-runs.sh`.
pub const RUNS: [(&str, Option<&str>, &str); 3] = [
    ("demo", None, include_str!("runs/demo.csv")),
    (
        "stability/unstable",
        Some("depth_level"),
        include_str!("runs/stability-unstable.csv"),
    ),
    (
        "stability/stable",
        None,
        include_str!("runs/stability-stable.csv"),
    ),
];

/// One real run's steps as the trainer sent them (the depth ratio as a two-layer
/// `hidden_var` of 1 and the ratio).
pub fn real_run(csv: &str) -> Vec<StepRecord> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    lines
        .map(|line| {
            let mut r = StepRecord::at(0);
            for (name, v) in header.iter().zip(line.split(',')) {
                let x: f64 = v.parse().unwrap_or(f64::NAN);
                match *name {
                    "step" => r.step = x as u64,
                    "depth_ratio" => {
                        r.layers
                            .insert("hidden_var".into(), vec![Metric(1.0), Metric(x)]);
                    }
                    "attn_logit_max" => {
                        r.layers.insert((*name).into(), vec![Metric(x)]);
                    }
                    scalar => {
                        r.scalars.insert(scalar.into(), Metric(x));
                    }
                }
            }
            r
        })
        .collect()
}

/// The real runs' losses and grad norms: healthy, so every spike alert on them is false.
pub fn real_runs() -> Vec<Series> {
    let mut out = Vec::new();
    for (name, _, csv) in RUNS {
        let steps = real_run(csv);
        for scalar in ["loss", "grad_norm"] {
            out.push(Series {
                label: format!("{name} {scalar}"),
                scalar,
                values: steps
                    .iter()
                    .map(|r| r.scalars.get(scalar).map_or(f64::NAN, |m| m.get()))
                    .collect(),
                spikes: Vec::new(),
            });
        }
    }
    out
}

/// A real run judged whole: every alert (name, step) a fresh detector raises over all its
/// series at once, as the server would.
pub struct RealRunAlerts {
    pub name: &'static str,
    /// The depth alert it must raise, if any.
    pub depth_expected: Option<&'static str>,
    pub alerts: Vec<(&'static str, u64)>,
}

impl RealRunAlerts {
    /// Its depth and attention alerts: what the depth expectation is about.
    pub fn depth(&self) -> Vec<(&'static str, u64)> {
        self.alerts
            .iter()
            .copied()
            .filter(|(n, _)| n.starts_with("depth_") || *n == "attn_logit_runaway")
            .collect()
    }

    /// Exactly the expected depth alert (at least once), or none when none is.
    pub fn depth_as_expected(&self) -> bool {
        let depth = self.depth();
        match self.depth_expected {
            Some(want) => depth.iter().any(|(n, _)| *n == want),
            None => depth.is_empty(),
        }
    }
}

pub fn real_run_alerts() -> Vec<RealRunAlerts> {
    RUNS.iter()
        .map(|&(name, depth_expected, csv)| {
            let mut d = Detector::new(Thresholds::default());
            let alerts = real_run(csv)
                .iter()
                .flat_map(|r| d.observe(r))
                .map(|a| (a.name, a.step))
                .collect();
            RealRunAlerts {
                name,
                depth_expected,
                alerts,
            }
        })
        .collect()
}

/// How a spike detector did over a set of series.
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

/// Runs a fresh detector (default thresholds) over each series, counting its spike alert.
pub fn score(series: Vec<Series>) -> Score {
    let mut score = Score::default();
    for s in series {
        let mut d = Detector::new(Thresholds::default());
        let mut alerts = Vec::new();
        for (t, v) in s.values.iter().enumerate() {
            let record = StepRecord {
                scalars: [(s.scalar.to_string(), Metric(*v))].into(),
                ..StepRecord::at(t as u64)
            };
            let fired = d.observe(&record);
            alerts.extend(fired.iter().filter(|a| a.name == s.alert()).map(|a| a.step));
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
