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
        Self {
            stable_lr: peak_lr,
            warmup_steps: cfg.warmup_steps,
            decay: cfg.decay_start.map(|start| Decay {
                start,
                steps: cfg.decay_steps.max(1),
                shape: cfg.decay_shape,
                final_lr: cfg.final_lr,
            }),
        }
    }

    /// The LR of step `step` (0-based): linear warmup to the stable level, flat, then decay.
    pub fn lr(&self, step: u64) -> f64 {
        match self.decay {
            Some(d) if step >= d.start => {
                // Start the decay from where the LR was, so a decay begun inside the warmup
                // does not jump up first.
                let from = self.stable_lr * self.warmup_factor(d.start);
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

    /// `anneal`: begin a decay at `step`, replacing any decay that was planned.
    pub fn anneal(&mut self, step: u64, steps: u64, shape: DecayShape, final_lr: f64) {
        self.decay = Some(Decay {
            start: step,
            steps: steps.max(1),
            shape,
            final_lr,
        });
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
        s.anneal(1, 2, DecayShape::Linear, 0.0);
        assert_eq!(s.lr(0), 0.0025);
        assert_eq!(s.lr(1), 0.005);
        assert_eq!(s.lr(2), 0.0025);
        assert_eq!(s.lr(3), 0.0);
    }
}
