//! Derived alerts: what a person should look at, computed from each run's steps as they arrive.
//!
//! A [`Detector`] per run sees the run's steps in order and says when one of these starts:
//! a non-finite loss or grad norm; a loss spike and a grad-norm spike, each judged against the
//! series' own recent level *and spread* (see [`Spike`]), so batch-to-batch noise is not an
//! alert; depth growth (the deep layers' `hidden_var` over the first layer's rising
//! steadily — in YuLan-Mini's divergent proxies the last/first-layer ratio grew linearly while
//! the loss still looked normal) and depth level (that ratio held far above its own start,
//! which is where a linear rise leads, and where a fast divergence is within a few dozen
//! steps); runaway attention logits. Each alert fires once when its condition starts and
//! re-arms only after the signal has clearly come back, so a diverging run raises a handful
//! of alerts, not one per step. Pure logic, no I/O: the writer stores what it returns.
//!
//! Thresholds come from the run's config under `"alerts"` (see [`Thresholds`]); missing keys
//! take the defaults.

pub mod corpus;

/// Every alert a run can raise (what a rule can be on).
pub const NAMES: [&str; 9] = [
    "non_finite_loss",
    "non_finite_grad_norm",
    "loss_spike",
    "grad_norm_spike",
    "depth_growth",
    "depth_level",
    "attn_logit_runaway",
    "throughput_drop",
    "stalled",
];

use keel_protocol::{Severity, StepRecord, names};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Steps of recent history a loss or grad-norm value is judged against, and the quiet
    /// period after a spike alert.
    pub ema_steps: f64,
    /// Steps seen before spikes are judged (the history must fill first).
    pub warmup_steps: u64,
    /// A loss spike is at least this far above the recent median, relatively (0.03: 3 %),
    /// besides [`Self::spike_sigmas`] robust σ: a near-constant loss does not alert on tiny
    /// changes.
    pub loss_spike: f64,
    /// A grad-norm spike is at least this many times the recent median, besides
    /// [`Self::spike_sigmas`] robust σ.
    pub grad_norm_spike: f64,
    /// How many robust σ (1.4826 × the median absolute deviation of the log values over the
    /// history) above the recent median a spike is.
    pub spike_sigmas: f64,
    /// Steps of depth-ratio history (the deep half's median `hidden_var` over the first
    /// layer's) judged for depth growth and depth level.
    pub depth_window: usize,
    /// Growth of the depth ratio over the window that raises the alert.
    pub depth_growth: f64,
    /// How straight the rise must be: R² of a line through the window.
    pub depth_steadiness: f64,
    /// The depth ratio's median over the window at this many times the lowest ratio the
    /// run has shown (its start, as a rule) is a depth-level alert.
    pub depth_level: f64,
    /// An `attn_logit_max` above this, in any layer, is runaway. Healthy proxies reach
    /// about 100 as attention sharpens; a runaway one grows by orders of magnitude.
    pub attn_logit_max: f64,
    /// `tokens_per_s` whose median over the last `throughput_window` steps falls below this
    /// fraction of its median over the `throughput_window` × 10 before is a throughput drop.
    pub throughput_drop: f64,
    pub throughput_window: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            ema_steps: 200.0,
            warmup_steps: 50,
            loss_spike: 0.03,
            grad_norm_spike: 1.1,
            spike_sigmas: 4.5,
            depth_window: 100,
            depth_growth: 1.5,
            depth_steadiness: 0.8,
            depth_level: 20.0,
            attn_logit_max: 1000.0,
            throughput_drop: 0.5,
            throughput_window: 20,
        }
    }
}

impl Thresholds {
    /// Every threshold in its range: a value outside it would silence a detector or make it
    /// fire on every step.
    pub fn validate(&self) -> Result<(), String> {
        let ranges: [(&str, f64, f64, f64); 10] = [
            ("ema_steps", self.ema_steps, 20.0, 100_000.0),
            ("loss_spike", self.loss_spike, 0.0, 100.0),
            ("grad_norm_spike", self.grad_norm_spike, 1.0, 1e6),
            ("spike_sigmas", self.spike_sigmas, 1.0, 1e3),
            ("depth_growth", self.depth_growth, 1.0, 1e6),
            ("depth_steadiness", self.depth_steadiness, 0.0, 1.0),
            ("depth_level", self.depth_level, 1.0, 1e12),
            ("attn_logit_max", self.attn_logit_max, 0.0, 1e12),
            ("throughput_drop", self.throughput_drop, 0.0, 1.0),
            ("depth_window", self.depth_window as f64, 3.0, 100_000.0),
        ];
        for (name, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(format!("`{name}` is {v}: it goes from {lo} to {hi}"));
            }
        }
        if self.warmup_steps > 10_000_000 || !(3..=100_000).contains(&self.throughput_window) {
            return Err(
                "`warmup_steps` goes to 10000000, `throughput_window` from 3 to 100000".into(),
            );
        }
        Ok(())
    }

    /// The `alerts` object of a run's config, or the defaults (also when it is malformed:
    /// a typo in a threshold must not stop a run from being recorded).
    pub fn from_config(config: &serde_json::Value) -> Thresholds {
        // `alerts.rules` are the run's rules (see `storage::runs::rules`) and
        // `alerts.webhooks` where it notifies (see `webhooks`), not thresholds.
        let mut alerts = config.get("alerts").cloned().unwrap_or_default();
        if let Some(o) = alerts.as_object_mut() {
            o.remove("rules");
            o.remove("webhooks");
        }
        serde_json::from_value(alerts).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: &'static str,
    pub severity: Severity,
    pub step: u64,
    pub message: String,
    /// How far it went, in its own units (σ for a spike, growth for depth, …): of one kind's
    /// alerts, the largest is an incident's peak.
    pub size: f64,
}

/// A spike trigger judged against the series' own noise, on the log scale (loss and grad norm
/// are positive and their noise is multiplicative), over the last `ema_steps` values:
///
/// - the spread is the robust σ (1.4826 × the median absolute deviation) of each value less
///   the median of its eight neighbours, so a trend (a decay, the fall of warmup) or a slow
///   wander does not count as noise; over the window or its newest [`RECENT_NOISE`] values,
///   whichever is louder;
/// - the noise's own tail counts too: a value must rise [`TAIL_MULTIPLE`] times as far as all
///   but the top percent of the last [`TAIL_WINDOW`] residuals. Batch noise is rarely normal (a batch of
///   a few sequences from a mixed corpus is sometimes all prose, sometimes all arithmetic),
///   and a σ measured on its core alone would call its tail spikes;
/// - the expected value is the median of the last few values carried forward by their trend,
///   so a spike during a fast fall is still seen above it.
///
/// A value is a spike when it is above all of these bars and at least `factor` times the
/// expected value (a near-constant series does not alert on tiny changes); the trigger
/// re-arms once the signal is back within half of that. A spike's own rise is kept out of
/// the noise, so one spike does not raise the bar for the next.
///
/// A [`Spike::lasting`] trigger (the grad norm's) also wants the next value still above half
/// the bar: one batch's outlier, whose update clipping bounds, is not an alert, while a grad
/// norm that jumps and stays up is, at the step it jumped.
#[derive(Debug, Default)]
struct Spike {
    history: std::collections::VecDeque<f64>,
    /// Whether each value of the history was a spike (kept out of the noise).
    spiked: std::collections::VecDeque<bool>,
    /// Each value of the history (but the newest few) less the median of its neighbours.
    residuals: std::collections::VecDeque<f64>,
    /// The last [`TAIL_WINDOW`] residuals, in arrival order and sorted: the noise's tail.
    tail_order: std::collections::VecDeque<f64>,
    tail_sorted: Vec<f64>,
    seen: u64,
    disarmed: bool,
    lasting: bool,
    /// A lasting trigger's candidate, waiting for the next value: (fired, its bar).
    pending: Option<(Fired, f64)>,
}

/// A spike: its step, the value expected there, and by how many robust σ it rose.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fired {
    step: u64,
    value: f64,
    expected: f64,
    sigmas: f64,
}

/// Robust σ of a normal sample: MAD × this.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Values whose median is the recent level.
const LEVEL_OF: usize = 9;
/// A value less the median of the eight around it varies more than the noise (the median
/// has noise of its own): on normal noise its robust σ is 1.086 σ (measured over 2·10⁵
/// samples), so this many times it is σ.
const NEIGHBOURHOOD_TO_SIGMA: f64 = 1.0 / 1.086;
/// How much more a rise above the expected value varies than the noise itself: the expected
/// value is made of medians of nine, whose own noise adds (measured on normal noise: 1.1).
const EXPECTATION_TO_RISE: f64 = 1.1;
/// The newest residuals whose spread is the noise when it is louder than the window's, and
/// by how much louder it must be to count: the spread of 50 values is only good to ±17 %
/// (one σ), so a spread up to 30 % above the window's is taken as the same noise.
const RECENT_NOISE: usize = 50;
const LOUDER: f64 = 1.3;
/// The residuals whose quantile [`TAIL_QUANTILE`] stands for the noise's tail, and how many
/// times it a spike must rise. On normal noise the bar this makes is about 4.6 σ, near
/// [`Thresholds::spike_sigmas`]: it counts where the tail is heavier than normal.
const TAIL_WINDOW: usize = 2000;
const TAIL_QUANTILE: f64 = 0.99;
const TAIL_MULTIPLE: f64 = 2.0;

fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

impl Spike {
    fn lasting() -> Spike {
        Spike {
            lasting: true,
            ..Default::default()
        }
    }

    /// Judges value `v` at `step`: a spike that starts here, or (for a lasting trigger) the
    /// one that started at the step before and is still up.
    fn observe(&mut self, step: u64, v: f64, factor: f64, t: &Thresholds) -> Option<Fired> {
        if !(v.is_finite() && v > 0.0) {
            return None;
        }
        let x = v.ln();
        self.seen += 1;
        let window = t.ema_steps.max(2.0 * LEVEL_OF as f64) as usize;
        let mut fired = None;
        let mut spiked = false;
        if self.seen > t.warmup_steps && self.history.len() >= LEVEL_OF * 3 {
            let (expected, sigma, bar) = self.bar(factor, t);
            let rise = x - expected;
            if let Some((candidate, bar)) = self.pending.take() {
                // A lasting trigger's candidate: still up, or one batch's outlier.
                if x - candidate.expected.ln() > bar / 2.0 {
                    fired = Some(candidate);
                    spiked = true;
                } else {
                    self.disarmed = false;
                }
            } else if !self.disarmed && rise > bar {
                self.disarmed = true;
                spiked = true;
                let sigmas = if sigma > 0.0 {
                    rise / sigma
                } else {
                    f64::INFINITY
                };
                let candidate = Fired {
                    step,
                    value: v,
                    expected: expected.exp(),
                    sigmas,
                };
                match self.lasting {
                    true => self.pending = Some((candidate, bar)),
                    false => fired = Some(candidate),
                }
            } else if self.disarmed && rise <= bar / 2.0 {
                self.disarmed = false;
            }
        }
        self.history.push_back(x);
        self.spiked.push_back(spiked);
        if self.history.len() > window {
            self.history.pop_front();
            self.spiked.pop_front();
        }
        // The value at the middle of the newest LEVEL_OF now has its whole neighbourhood.
        let n = self.history.len();
        if n >= LEVEL_OF && !self.spiked[n - 1 - LEVEL_OF / 2] {
            let mut around: Vec<f64> = self.history.range(n - LEVEL_OF..).copied().collect();
            let middle = around.remove(LEVEL_OF / 2);
            let residual = middle - median_of(around);
            self.residuals.push_back(residual);
            if self.residuals.len() > window {
                self.residuals.pop_front();
            }
            let at = self.tail_sorted.partition_point(|r| *r < residual);
            self.tail_sorted.insert(at, residual);
            self.tail_order.push_back(residual);
            if self.tail_order.len() > TAIL_WINDOW {
                let old = self.tail_order.pop_front().unwrap_or_default();
                let at = self.tail_sorted.partition_point(|r| *r < old);
                self.tail_sorted.remove(at);
            }
        }
        fired
    }

    /// The value expected next (log scale), the noise's robust σ, and the rise above the
    /// expected value that makes a spike.
    fn bar(&self, factor: f64, t: &Thresholds) -> (f64, f64, f64) {
        let h = &self.history;
        let n = h.len();
        let last = |from: usize, to: usize| median_of(h.range(from..to).copied().collect());
        let centre = median_of(self.residuals.iter().copied().collect());
        // The noise over the window, or over its newest part where that is louder: a loss
        // whose noise grows (a mix's sources part as each is learnt) is judged by its noise
        // now, not by its quieter past.
        let spread = |from: usize| {
            median_of(
                self.residuals
                    .range(from..)
                    .map(|r| (r - centre).abs())
                    .collect(),
            )
        };
        let recent = self.residuals.len().saturating_sub(RECENT_NOISE);
        let noise = spread(0).max(spread(recent) / LOUDER) * MAD_TO_SIGMA * NEIGHBOURHOOD_TO_SIGMA;
        // A rise is the value less an expected value that has noise of its own.
        let sigma = noise * EXPECTATION_TO_RISE;
        let sorted = &self.tail_sorted;
        let tail = sorted
            .get((sorted.len().saturating_sub(1) as f64 * TAIL_QUANTILE) as usize)
            .map_or(0.0, |q| (q - centre) * NEIGHBOURHOOD_TO_SIGMA);
        // Expected: the recent level, carried forward by the recent trend where it rises.
        let recent = last(n - LEVEL_OF, n);
        // The trend from the level two spans back: a slope over a longer base is less noisy.
        let before = last(n - 3 * LEVEL_OF, n - 2 * LEVEL_OF);
        let slope = (recent - before) / (2 * LEVEL_OF) as f64;
        // Only a rise is carried forward: a fall that slows (a loss early in training) would
        // otherwise leave the next value above where the fall pointed, and look like a spike.
        let expected = recent + slope.max(0.0) * (LEVEL_OF + 1) as f64 / 2.0;
        let bar = (t.spike_sigmas * sigma)
            .max(TAIL_MULTIPLE * tail)
            .max(factor.ln());
        (expected, sigma, bar)
    }
}

#[derive(Debug, Default)]
pub struct Detector {
    thresholds: Thresholds,
    last_step: Option<u64>,
    loss_non_finite: bool,
    grad_non_finite: bool,
    loss: Spike,
    /// Lasting: a lone batch's outlier is not a grad-norm spike.
    grad: Spike,
    ratios: std::collections::VecDeque<f64>,
    /// The lowest depth ratio seen: the run's own start, as a rule.
    lowest_ratio: f64,
    depth_armed: bool,
    level_armed: bool,
    attn_armed: bool,
    /// Recent `tokens_per_s` with each record's time, newest last: the baseline and then the
    /// recent window.
    throughput: std::collections::VecDeque<(f64, Option<f64>)>,
    /// While the recent window is below the limit: the record time it fell there, and the
    /// baseline it fell from.
    throughput_low: Option<(f64, f64)>,
    throughput_armed: bool,
    /// The largest LR seen: while the LR still rises past it, the run is in its warmup.
    top_lr: f64,
    in_warmup: bool,
    /// Per alert name, the step before which it stays quiet after firing.
    quiet_until: std::collections::HashMap<&'static str, u64>,
}

/// The shortest throughput drop, by the records' own clock, that counts as one.
pub const MIN_DROP_SECONDS: f64 = 2.0;

impl Detector {
    pub fn new(thresholds: Thresholds) -> Detector {
        Detector {
            thresholds,
            lowest_ratio: f64::INFINITY,
            depth_armed: true,
            level_armed: true,
            attn_armed: true,
            throughput_armed: true,
            grad: Spike::lasting(),
            ..Default::default()
        }
    }

    /// New thresholds, from the next step on; what the detector has seen stays.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// Judges one step. Steps at or before one already judged are ignored (re-sends,
    /// late arrivals): the detectors follow the run forward.
    pub fn observe(&mut self, r: &StepRecord) -> Vec<Alert> {
        if self.last_step.is_some_and(|s| r.step <= s) {
            return Vec::new();
        }
        self.last_step = Some(r.step);
        let mut out = Vec::new();
        let scalar = |k: &str| r.scalars.get(k).map(|m| m.get());
        // The LR rising to a new high: the schedule's warmup, whose transients are named so.
        if let Some(lr) = scalar(names::LR).filter(|l| l.is_finite()) {
            self.in_warmup = lr > self.top_lr;
            self.top_lr = self.top_lr.max(lr);
        }
        if let Some(tps) = scalar(names::TOKENS_PER_S) {
            self.throughput_check(r.step, (tps, r.time), &mut out);
        }
        if let Some(loss) = scalar(names::LOSS) {
            self.loss_checks(r.step, loss, &mut out);
        }
        if let Some(g) = scalar(names::GRAD_NORM) {
            self.grad_checks(r.step, g, &mut out);
        }
        if let Some(var) = r.layers.get(names::HIDDEN_VAR) {
            let var: Vec<f64> = var.iter().map(|m| m.get()).collect();
            if let Some(ratio) = depth_ratio(&var) {
                self.depth_check(r.step, ratio, &mut out);
            }
        }
        if let Some(logits) = r.layers.get(names::ATTN_LOGIT_MAX) {
            let top = logits
                .iter()
                .map(|m| m.get())
                .fold(f64::NEG_INFINITY, f64::max);
            self.attn_check(r.step, top, &mut out);
        }
        if self.in_warmup {
            for a in out.iter_mut().filter(|a| a.name.ends_with("_spike")) {
                a.message
                    .push_str(" — during the LR warmup, where the loss and grad norm move fast");
            }
        }
        self.quieten(out)
    }

    /// Tokens/s: the median of the last `throughput_window` steps against the median of the
    /// ten windows before them. A median ignores a single slow step (a checkpoint, an eval).
    /// A drop that lasts less than [`MIN_DROP_SECONDS`] by the records' clock is not one: in a
    /// run of 100 steps/s a window is a fifth of a second, and anything else on the machine
    /// dips it.
    fn throughput_check(
        &mut self,
        step: u64,
        (tps, time): (f64, Option<f64>),
        out: &mut Vec<Alert>,
    ) {
        if !(tps.is_finite() && tps > 0.0) {
            return;
        }
        let w = self.thresholds.throughput_window.max(3);
        self.throughput.push_back((tps, time));
        if self.throughput.len() > 11 * w {
            self.throughput.pop_front();
        }
        if self.throughput.len() < 11 * w {
            return;
        }
        let h: Vec<f64> = self.throughput.iter().map(|(v, _)| *v).collect();
        let recent = median_of(h[10 * w..].to_vec());
        let limit = self.thresholds.throughput_drop;
        // While a dip lasts, it is judged against the baseline from before it, which the dip
        // would otherwise drag down with itself.
        let before = match self.throughput_low {
            Some((_, frozen)) => frozen,
            None => median_of(h[..10 * w].to_vec()),
        };
        let ratio = recent / before;
        if ratio < limit {
            self.throughput_low
                .get_or_insert((time.unwrap_or(f64::NAN), before));
        } else if ratio >= (1.0 + limit) / 2.0 {
            self.throughput_low = None;
        }
        // How long it has lasted, by the records' clock (unknown times: long enough).
        let lasted = match (self.throughput_low, time) {
            (Some((since, _)), Some(now)) if since.is_finite() => now - since >= MIN_DROP_SECONDS,
            (Some(_), _) => true,
            (None, _) => false,
        };
        if self.throughput_armed && ratio < limit && lasted {
            self.throughput_armed = false;
            let msg = format!(
                "throughput fell to {recent:.0} tokens/s over the last {w} steps, {:.0} % of the {before:.0} before",
                ratio * 100.0
            );
            out.push(alert(
                "throughput_drop",
                Severity::Warning,
                step,
                1.0 / ratio,
                msg,
            ));
        } else if !self.throughput_armed && ratio >= (1.0 + limit) / 2.0 {
            self.throughput_armed = true;
        }
    }

    /// After an alert fires, the same alert stays quiet for a while (a signal hovering at
    /// its threshold would otherwise fire on every crossing): spikes for `ema_steps` steps,
    /// slow trends for ten windows. A non-finite value is never quietened: each return of
    /// NaN after finite values is news.
    fn quieten(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        let slow = 10 * self.thresholds.depth_window as u64;
        let fast = self.thresholds.ema_steps as u64;
        alerts
            .into_iter()
            .filter(|a| {
                if self
                    .quiet_until
                    .get(a.name)
                    .is_some_and(|&until| a.step < until)
                {
                    return false;
                }
                let pause = match a.name {
                    "depth_growth" | "depth_level" | "attn_logit_runaway" | "throughput_drop" => {
                        slow
                    }
                    "loss_spike" | "grad_norm_spike" => fast,
                    _ => 0,
                };
                self.quiet_until.insert(a.name, a.step + pause);
                true
            })
            .collect()
    }

    fn loss_checks(&mut self, step: u64, loss: f64, out: &mut Vec<Alert>) {
        non_finite(
            &mut self.loss_non_finite,
            "non_finite_loss",
            "loss",
            step,
            loss,
            out,
        );
        let factor = 1.0 + self.thresholds.loss_spike;
        if let Some(f) = self.loss.observe(step, loss, factor, &self.thresholds) {
            let msg = format!(
                "loss {:.4} is {:.2}× the {:.4} its recent course led to ({:.1} σ of its noise)",
                f.value,
                f.value / f.expected,
                f.expected,
                f.sigmas
            );
            out.push(alert(
                "loss_spike",
                Severity::Warning,
                f.step,
                f.sigmas,
                msg,
            ));
        }
    }

    fn grad_checks(&mut self, step: u64, g: f64, out: &mut Vec<Alert>) {
        non_finite(
            &mut self.grad_non_finite,
            "non_finite_grad_norm",
            "grad norm",
            step,
            g,
            out,
        );
        let factor = self.thresholds.grad_norm_spike;
        if let Some(f) = self.grad.observe(step, g, factor, &self.thresholds) {
            let msg = format!(
                "grad norm {:.4} is {:.1}× the {:.4} its recent course led to ({:.1} σ of its noise), and stayed up at {g:.4}",
                f.value,
                f.value / f.expected,
                f.expected,
                f.sigmas
            );
            out.push(alert(
                "grad_norm_spike",
                Severity::Warning,
                f.step,
                f.sigmas,
                msg,
            ));
        }
    }

    fn depth_check(&mut self, step: u64, ratio: f64, out: &mut Vec<Alert>) {
        self.lowest_ratio = self.lowest_ratio.min(ratio);
        let w = self.thresholds.depth_window.max(3);
        self.ratios.push_back(ratio);
        if self.ratios.len() > w {
            self.ratios.pop_front();
        }
        if self.ratios.len() < w {
            return;
        }
        let (growth, r2) = line_growth(self.ratios.iter().copied());
        let t = &self.thresholds;
        if self.depth_armed && growth >= t.depth_growth && r2 >= t.depth_steadiness {
            self.depth_armed = false;
            let msg = format!(
                "the deep layers' hidden_var over the first layer's rose {growth:.2}× over the last {w} steps, steadily (R² {r2:.2}); now {ratio:.3}"
            );
            out.push(alert("depth_growth", Severity::Warning, step, growth, msg));
        } else if !self.depth_armed && growth < 1.0 + (t.depth_growth - 1.0) / 2.0 {
            self.depth_armed = true;
        }
        // The level: the window's median against the lowest ratio yet. A median, so the
        // short transient a healthy run shows as its warmup ends is not a level.
        let held = median_of(self.ratios.iter().copied().collect());
        let times = held / self.lowest_ratio;
        if self.level_armed && times >= t.depth_level {
            self.level_armed = false;
            let msg = format!(
                "the deep layers' hidden_var has held at {held:.1}× the first layer's over the last {w} steps (median), {times:.0}× the lowest ratio yet, {:.2}: the deep layers' variance is running away from the shallow ones'",
                self.lowest_ratio
            );
            out.push(alert("depth_level", Severity::Warning, step, times, msg));
        } else if !self.level_armed && times < t.depth_level / 2.0 {
            self.level_armed = true;
        }
    }

    fn attn_check(&mut self, step: u64, top: f64, out: &mut Vec<Alert>) {
        let limit = self.thresholds.attn_logit_max;
        if self.attn_armed && (top > limit || top.is_nan()) {
            self.attn_armed = false;
            let msg = format!("an attention logit reached {top:.1} (limit {limit})");
            out.push(alert(
                "attn_logit_runaway",
                Severity::Warning,
                step,
                top,
                msg,
            ));
        } else if !self.attn_armed && top <= limit / 2.0 {
            self.attn_armed = true;
        }
    }
}

/// A critical alert when `v` turns non-finite after being finite; `was` remembers which it
/// was last.
fn non_finite(
    was: &mut bool,
    name: &'static str,
    what: &str,
    step: u64,
    v: f64,
    out: &mut Vec<Alert>,
) {
    let bad = !v.is_finite();
    if bad && !*was {
        let msg = format!("the {what} is {v}");
        out.push(alert(name, Severity::Critical, step, 0.0, msg));
    }
    *was = bad;
}

fn alert(name: &'static str, severity: Severity, step: u64, size: f64, message: String) -> Alert {
    Alert {
        name,
        severity,
        step,
        message,
        size,
    }
}

/// How far the deep layers' `hidden_var` is above the first layer's: the median over the
/// deeper half of the layers, over the first. The median, not the last layer alone: a
/// model's last block often grows its output by itself as its predictions sharpen (the final
/// norm takes the scale away again), which is not the accumulation through depth this is
/// about. `None` without two layers or with a first layer that is not positive and finite.
fn depth_ratio(var: &[f64]) -> Option<f64> {
    let (&first, _) = var.split_first()?;
    if var.len() < 2 || !(first.is_finite() && first > 0.0) {
        return None;
    }
    let ratio = median_of(var[var.len() / 2..].to_vec()) / first;
    ratio.is_finite().then_some(ratio)
}

/// Least-squares line through the values (x = 0, 1, …): the ratio of its end to its start
/// (how much it grew) and its R² (how steadily).
fn line_growth(values: impl ExactSizeIterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.clone().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, y) in values.enumerate() {
        let dx = i as f64 - mean_x;
        let dy = y - mean_y;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let start = mean_y - slope * mean_x;
    let end = mean_y + slope * mean_x;
    let r2 = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        0.0
    };
    let growth = if start > 0.0 {
        end / start
    } else {
        f64::INFINITY
    };
    (growth, r2)
}

#[cfg(test)]
mod tests {
    use keel_protocol::Metric;

    use super::*;

    fn step(step: u64, loss: f64, grad: f64, var: (f64, f64), logit: f64) -> StepRecord {
        let mut r = StepRecord::at(step);
        r.scalars.insert("loss".into(), Metric(loss));
        r.scalars.insert("grad_norm".into(), Metric(grad));
        r.layers.insert(
            "hidden_var".into(),
            vec![Metric(var.0), Metric(var.1), Metric(var.1)],
        );
        r.layers
            .insert("attn_logit_max".into(), vec![Metric(5.0), Metric(logit)]);
        r
    }

    /// Runs a series through a detector and returns (alert name, step) pairs.
    fn fired(series: impl Iterator<Item = StepRecord>) -> Vec<(&'static str, u64)> {
        let mut d = Detector::new(Thresholds::default());
        series
            .flat_map(|r| d.observe(&r))
            .map(|a| (a.name, a.step))
            .collect()
    }

    /// A healthy run: losses falling through warmup with independent batch noise of about
    /// 1.5 % (what a batch of a few hundred thousand tokens shows), a flat depth ratio.
    fn healthy(s: u64) -> StepRecord {
        let mut n = corpus::Noise(s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        n.uniform();
        let noise = n.normal() * 0.015;
        step(
            s,
            2.0 + 3.0 * (-(s as f64) / 200.0).exp() + noise,
            0.8 + noise,
            (1.0, 1.2 + noise),
            8.0,
        )
    }

    #[test]
    fn a_healthy_run_raises_nothing() {
        assert_eq!(fired((0..2000).map(healthy)), vec![]);
    }

    #[test]
    fn a_nan_loss_fires_once_until_the_loss_is_finite_again() {
        let series = (0..100).map(|s| {
            let mut r = healthy(s);
            if (50..60).contains(&s) || s == 80 {
                r.scalars.insert("loss".into(), Metric::NAN);
            }
            r
        });
        assert_eq!(
            fired(series),
            vec![("non_finite_loss", 50), ("non_finite_loss", 80)]
        );
    }

    #[test]
    fn an_infinite_grad_norm_fires() {
        let series = (0..100).map(|s| {
            let mut r = healthy(s);
            if s == 70 {
                r.scalars.insert("grad_norm".into(), Metric(f64::INFINITY));
            }
            r
        });
        assert_eq!(fired(series), vec![("non_finite_grad_norm", 70)]);
    }

    #[test]
    fn a_one_step_loss_spike_fires_and_small_bumps_do_not() {
        let spike = (0..300).map(|s| {
            let mut r = healthy(s);
            if s == 250 {
                r.scalars.insert("loss".into(), Metric(9.0));
            }
            r
        });
        assert_eq!(fired(spike), vec![("loss_spike", 250)]);
        let bump = (0..300).map(|s| {
            let mut r = healthy(s);
            if s == 250 {
                // A bump under the minimum rise (3 %), though several σ of this quiet noise.
                let loss = r.scalars["loss"].get() * 1.02;
                r.scalars.insert("loss".into(), Metric(loss));
            }
            r
        });
        assert_eq!(fired(bump), vec![]);
    }

    #[test]
    fn a_grad_norm_that_jumps_and_stays_up_fires_at_its_jump_and_a_lone_outlier_does_not() {
        let series = |up: std::ops::Range<u64>| {
            (0..300).map(move |s| match up.contains(&s) {
                true => with(healthy(s), "grad_norm", 10.0),
                false => healthy(s),
            })
        };
        assert_eq!(fired(series(200..202)), vec![("grad_norm_spike", 200)]);
        assert_eq!(fired(series(200..201)), vec![]);
    }

    #[test]
    fn a_steadily_rising_depth_ratio_fires_while_the_loss_looks_normal() {
        // The depth ratio rising linearly from 1.2 by 1% of a unit per step.
        let series = (0..400).map(|s| {
            let mut r = healthy(s);
            r.layers.insert(
                "hidden_var".into(),
                vec![
                    Metric(1.0),
                    Metric(1.0),
                    Metric(1.2 + s as f64 * 0.01),
                    Metric(1.2 + s as f64 * 0.01),
                ],
            );
            r
        });
        let alerts = fired(series);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].0, "depth_growth");
    }

    #[test]
    fn a_noisy_but_flat_depth_ratio_does_not_fire() {
        let series = (0..1000).map(|s| {
            let mut r = healthy(s);
            let wobble = 1.0 + 0.5 * (s as f64 / 7.0).sin();
            r.layers.insert(
                "hidden_var".into(),
                vec![Metric(1.0), Metric(2.0 * wobble), Metric(2.0 * wobble)],
            );
            r
        });
        assert_eq!(fired(series), vec![]);
    }

    /// A series whose depth ratio is `ratio(step)`.
    fn with_ratio(ratio: impl Fn(u64) -> f64) -> impl Iterator<Item = StepRecord> {
        (0..600).map(move |s| {
            let mut r = healthy(s);
            r.layers.insert(
                "hidden_var".into(),
                vec![Metric(0.5), Metric(0.5 * ratio(s)), Metric(0.5 * ratio(s))],
            );
            r
        })
    }

    #[test]
    fn a_ratio_held_far_above_its_start_fires_once_and_a_warmup_transient_does_not() {
        // The unstable grid variant's shape: 1 at step 0, ~100 from step 10 to 80, then
        // falling back as the first layer's variance grows too.
        let runaway = |s: u64| match s {
            0..=9 => 1.0 + 10.0 * s as f64,
            10..=80 => 100.0,
            _ => (100.0 - (s - 80) as f64).max(8.0),
        };
        assert_eq!(fired(with_ratio(runaway)), vec![("depth_level", 99)]);
        // The stable variant's: a peak of 50 for about 25 steps as warmup ends, then ~3.
        let transient = |s: u64| match s {
            0..=20 => 1.0,
            21..=45 => 50.0,
            _ => 3.0,
        };
        assert_eq!(fired(with_ratio(transient)), vec![]);
    }

    #[test]
    fn the_depth_ratio_is_the_deep_half_over_the_first_layer_and_not_the_last_block_alone() {
        assert_eq!(depth_ratio(&[2.0, 4.0, 6.0, 8.0, 100.0]), Some(4.0));
        assert_eq!(depth_ratio(&[1.0, 3.0]), Some(3.0));
        assert_eq!(depth_ratio(&[5.0]), None);
        assert_eq!(depth_ratio(&[0.0, 1.0]), None);
        assert_eq!(depth_ratio(&[f64::NAN, 1.0]), None);
    }

    #[test]
    fn runaway_attention_logits_fire_once() {
        let series = (0..300).map(|s| {
            let mut r = healthy(s);
            let top = if s >= 150 {
                8.0 * 1.1f64.powi((s - 150) as i32)
            } else {
                8.0
            };
            r.layers
                .insert("attn_logit_max".into(), vec![Metric(1.0), Metric(top)]);
            r
        });
        let alerts = fired(series);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].0, "attn_logit_runaway");
    }

    #[test]
    fn thresholds_come_from_the_run_config() {
        let config = serde_json::json!({"alerts": {"attn_logit_max": 10.0}});
        let t = Thresholds::from_config(&config);
        assert_eq!(t.attn_logit_max, 10.0);
        assert_eq!(t.loss_spike, Thresholds::default().loss_spike);
        let mut d = Detector::new(t);
        let a = d.observe(&step(0, 1.0, 1.0, (1.0, 1.0), 12.0));
        assert_eq!(a[0].name, "attn_logit_runaway");
    }

    #[test]
    fn an_alert_hovering_at_its_threshold_fires_once_per_quiet_period() {
        let series = (0..1000).map(|s| {
            let mut r = healthy(s);
            let top = if s % 2 == 0 { 1500.0 } else { 10.0 };
            r.layers.insert("attn_logit_max".into(), vec![Metric(top)]);
            r
        });
        assert_eq!(fired(series), vec![("attn_logit_runaway", 0)]);
    }

    #[test]
    fn steps_from_the_past_are_not_judged_again() {
        let mut d = Detector::new(Thresholds::default());
        assert_eq!(d.observe(&step(5, f64::NAN, 1.0, (1.0, 1.0), 1.0)).len(), 1);
        assert_eq!(d.observe(&step(4, f64::NAN, 1.0, (1.0, 1.0), 1.0)).len(), 0);
    }

    /// The corpus's budgets: at most one false alert per 10,000 healthy steps, every
    /// injected spike found at its step.
    fn within_budget(name: &str, healthy: Vec<corpus::Series>, spiked: Vec<corpus::Series>) {
        let healthy = corpus::score(healthy);
        assert!(
            healthy.false_per_10k() <= 1.0,
            "{name}: {:.2} false alerts per 10,000 healthy steps: at {:?}",
            healthy.false_per_10k(),
            healthy.false_alerts
        );
        let spiked = corpus::score(spiked);
        assert!(
            spiked.missed.is_empty(),
            "{name}: missed {:?}",
            spiked.missed
        );
        assert_eq!(spiked.found, spiked.injected, "{name}");
        assert!(
            spiked.false_per_10k() <= 1.0,
            "{name}: {:?}",
            spiked.false_alerts
        );
    }

    #[test]
    fn loss_spikes_are_found_within_budget_on_the_generated_corpus() {
        within_budget(
            "loss_spike",
            corpus::healthy_losses(),
            corpus::spiked_losses(),
        );
    }

    #[test]
    fn grad_norm_spikes_are_found_within_budget_on_the_generated_corpus() {
        within_budget(
            "grad_norm_spike",
            corpus::healthy_grad_norms(),
            corpus::spiked_grad_norms(),
        );
    }

    #[test]
    fn real_healthy_runs_raise_no_spike_alert() {
        let score = corpus::score(corpus::real_runs());
        assert!(score.false_alerts.is_empty(), "{:?}", score.false_alerts);
    }

    #[test]
    fn the_unstable_grid_variant_raises_its_depth_alert_while_its_loss_looks_normal() {
        for run in corpus::real_run_alerts() {
            let (name, alerts) = (run.name, &run.alerts);
            assert!(run.depth_as_expected(), "{name}: {alerts:?}");
            let Some(want) = run.depth_expected else {
                continue;
            };
            let at = alerts.iter().find(|(n, _)| *n == want).unwrap().1;
            assert!(at < 200, "{name}: {want} at step {at}");
            let loss_before = alerts
                .iter()
                .filter(|(n, s)| n.contains("loss") && *s <= at)
                .count();
            assert_eq!(loss_before, 0, "{name}: its loss alerted first: {alerts:?}");
        }
    }

    fn with(mut r: StepRecord, key: &str, v: f64) -> StepRecord {
        r.scalars.insert(key.into(), Metric(v));
        r
    }

    #[test]
    fn a_lasting_throughput_drop_fires_once_and_a_slow_step_does_not() {
        let tps = |s: u64| match s {
            300 => 1_000.0,        // one slow step: a checkpoint
            600..=700 => 30_000.0, // half the speed and less, for a hundred steps
            _ => 80_000.0 + (s % 7) as f64 * 500.0,
        };
        let run = (0..900).map(|s| with(healthy(s), "tokens_per_s", tps(s)));
        let got: Vec<(&str, u64)> = fired(run)
            .into_iter()
            .filter(|(n, _)| *n == "throughput_drop")
            .collect();
        assert_eq!(got, vec![("throughput_drop", 610)]);
    }

    #[test]
    fn a_throughput_dip_shorter_than_two_seconds_is_not_a_drop() {
        // 100 steps/s by the records' clock: a window of 20 steps is a fifth of a second.
        let tps = |s: u64| match s {
            600..=630 => 20_000.0,  // 0.3 s of half speed: the machine was busy
            800..=1400 => 20_000.0, // 6 s of it: a drop
            _ => 50_000.0 + (s % 7) as f64 * 500.0,
        };
        let run = (0..1600).map(|s| {
            let mut r = with(healthy(s), "tokens_per_s", tps(s));
            r.time = Some(1.0e9 + s as f64 * 0.01);
            r
        });
        let got: Vec<(&str, u64)> = fired(run)
            .into_iter()
            .filter(|(n, _)| *n == "throughput_drop")
            .collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].1 >= 1000, "{got:?}");
    }

    #[test]
    fn spikes_during_the_lr_warmup_say_so() {
        let mut d = Detector::new(Thresholds::default());
        let mut messages = Vec::new();
        for s in 0..400u64 {
            // The LR rises for 300 steps; a spike at 150 (in warmup) and at 350 (after).
            let lr = 0.01 * ((s + 1) as f64 / 300.0).min(1.0);
            let mut r = with(healthy(s), "lr", lr);
            if s == 150 || s == 350 {
                let loss = r.scalars["loss"].get() * 2.0;
                r = with(r, "loss", loss);
            }
            messages.extend(d.observe(&r).into_iter().filter(|a| a.name == "loss_spike"));
        }
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].message.contains("during the LR warmup"),
            "{}",
            messages[0].message
        );
        assert!(
            !messages[1].message.contains("warmup"),
            "{}",
            messages[1].message
        );
    }
}
