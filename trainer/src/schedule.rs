//! The warmup–stable–decay (WSD) learning-rate schedule, as a pure function of its state and
//! the step.
//!
//! The state is small and serialisable (it goes into every checkpoint): the stable LR level
//! (`set_lr` changes it; warmup and decay scale from it), the warmup length, and the decay once
//! it has started — at a configured step or when an operator sends `anneal`. Nothing here reads
//! a clock or a tensor.

use keel_protocol::DecayShape;
use serde::{Deserialize, Serialize};

use crate::config::ScheduleConfig;

/// A decay phase: from `start` over `steps` steps down to `final_lr`, then held there.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decay {
    pub start: u64,
    pub steps: u64,
    pub shape: DecayShape,
    pub final_lr: f64,
    /// Where the decay starts, as a fraction of the stable level: 1 from the stable phase,
    /// less when it begins inside the warmup or inside an earlier decay. A fraction and not an
    /// LR, so a `set_lr` during the decay still scales it.
    #[serde(default = "one")]
    pub from: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The stable level (the peak LR unless an operator changed it).
    pub stable_lr: f64,
    pub warmup_steps: u64,
    pub decay: Option<Decay>,
}

impl Schedule {
    pub fn new(peak_lr: f64, cfg: &ScheduleConfig) -> Self {
        let mut s = Self {
            stable_lr: peak_lr,
            warmup_steps: cfg.warmup_steps,
            decay: None,
        };
        s.decay = cfg.decay_start.map(|start| Decay {
            start,
            steps: cfg.decay_steps.max(1),
            shape: cfg.decay_shape,
            final_lr: cfg.final_lr,
            // A decay planned inside the warmup starts from where the warmup got to.
            from: s.warmup_factor(start),
        });
        s
    }

    /// The LR of step `step` (0-based): linear warmup to the stable level, flat, then decay.
    pub fn lr(&self, step: u64) -> f64 {
        match self.decay {
            Some(d) if step >= d.start => {
                let from = self.stable_lr * d.from;
                let progress = ((step - d.start) as f64 / d.steps.max(1) as f64).min(1.0);
                d.final_lr + (from - d.final_lr) * decay_factor(d.shape, progress)
            }
            _ => self.stable_lr * self.warmup_factor(step),
        }
    }

    fn warmup_factor(&self, step: u64) -> f64 {
        if step >= self.warmup_steps {
            1.0
        } else {
            (step + 1) as f64 / self.warmup_steps as f64
        }
    }

    /// `anneal`: begin a decay at `step` from the LR the schedule has there, replacing any
    /// decay that was planned or under way. A second anneal during a decay continues from
    /// the decayed LR; an anneal never raises the LR, so a `final_lr` above the current LR is
    /// refused (that is a `set_lr`).
    pub fn anneal(
        &mut self,
        step: u64,
        steps: u64,
        shape: DecayShape,
        final_lr: f64,
    ) -> Result<(), String> {
        let now = self.lr(step);
        if final_lr > now {
            return Err(format!(
                "final_lr {final_lr} is above the current LR {now}: an anneal only lowers the \
                 LR (use set_lr to raise it)"
            ));
        }
        let from = if self.stable_lr > 0.0 {
            now / self.stable_lr
        } else {
            0.0
        };
        self.decay = Some(Decay {
            start: step,
            steps: steps.max(1),
            shape,
            final_lr,
            from,
        });
        Ok(())
    }
}

/// The fraction of the way from the final LR to the start LR at `progress` ∈ [0, 1].
pub fn decay_factor(shape: DecayShape, progress: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    match shape {
        DecayShape::OneMinusSqrt => 1.0 - p.sqrt(),
        DecayShape::Linear => 1.0 - p,
        DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wsd(decay_start: Option<u64>, shape: DecayShape) -> Schedule {
        Schedule::new(
            0.01,
            &ScheduleConfig {
                warmup_steps: 4,
                decay_start,
                decay_steps: 4,
                decay_shape: shape,
                final_lr: 0.001,
            },
        )
    }

    #[test]
    fn warmup_rises_linearly_to_the_stable_level_and_stays_there() {
        let s = wsd(None, DecayShape::Linear);
        let lrs: Vec<f64> = (0..7).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01]);
        assert_eq!(s.lr(1_000_000), 0.01);
    }

    #[test]
    fn each_decay_shape_gives_its_exact_values_and_then_holds_the_final_lr() {
        // Decay from 0.01 to 0.001 over steps 10..14: progress 0, 1/4, 1/2, 3/4, 1.
        let span = 0.009;
        let cases = [
            (DecayShape::Linear, [1.0, 0.75, 0.5, 0.25, 0.0]),
            (
                DecayShape::OneMinusSqrt,
                [1.0, 0.5, 1.0 - 0.5f64.sqrt(), 1.0 - 0.75f64.sqrt(), 0.0],
            ),
            (
                DecayShape::Cosine,
                [
                    1.0,
                    0.5 + 0.5 * (0.25 * std::f64::consts::PI).cos(),
                    0.5,
                    0.5 - 0.5 * (0.25 * std::f64::consts::PI).cos(),
                    0.0,
                ],
            ),
        ];
        for (shape, fractions) in cases {
            let s = wsd(Some(10), shape);
            for (i, f) in fractions.iter().enumerate() {
                let want = 0.001 + span * f;
                assert!(
                    (s.lr(10 + i as u64) - want).abs() < 1e-15,
                    "{shape:?} step {i}"
                );
            }
            assert_eq!(s.lr(9), 0.01);
            assert_eq!(s.lr(500), 0.001);
        }
    }

    #[test]
    fn set_lr_moves_the_stable_level_and_the_decay_scales_from_it() {
        let mut s = wsd(Some(10), DecayShape::Linear);
        s.stable_lr = 0.02;
        assert_eq!(s.lr(1), 0.01); // warmup step 1 of 4: half of the new level
        assert_eq!(s.lr(12), 0.001 + 0.019 * 0.5);
    }

    #[test]
    fn an_anneal_during_warmup_starts_from_the_current_lr() {
        let mut s = wsd(None, DecayShape::Linear);
        s.anneal(1, 2, DecayShape::Linear, 0.0).unwrap();
        assert_eq!(s.lr(0), 0.0025);
        assert_eq!(s.lr(1), 0.005);
        assert_eq!(s.lr(2), 0.0025);
        assert_eq!(s.lr(3), 0.0);
    }

    #[test]
    fn a_second_anneal_during_a_decay_continues_from_the_decayed_lr() {
        let mut s = wsd(None, DecayShape::Linear);
        s.anneal(10, 4, DecayShape::Linear, 0.0).unwrap();
        assert_eq!(s.lr(12), 0.005);
        // Halfway down, a new decay over 2 steps: it starts at 0.005, never back at 0.01.
        s.anneal(12, 2, DecayShape::Linear, 0.001).unwrap();
        let lrs: Vec<f64> = (12..15).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, [0.005, 0.003, 0.001]);
        assert!((10..40).all(|i| s.lr(i + 1) <= s.lr(i)));
        // A set_lr during the decay still scales it.
        s.stable_lr = 0.02;
        assert!((s.lr(12) - 0.01).abs() < 1e-15);
    }

    #[test]
    fn an_anneal_to_a_final_lr_above_the_current_one_is_refused_and_changes_nothing() {
        let mut s = wsd(None, DecayShape::Linear);
        s.anneal(10, 4, DecayShape::Linear, 0.0).unwrap();
        let before = s;
        let why = s.anneal(13, 4, DecayShape::Linear, 0.005).unwrap_err();
        assert!(why.contains("0.0025"), "{why}");
        assert_eq!(s, before);
    }
}
