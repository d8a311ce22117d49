//! Tagged values gathered into keel step records. The first value of a series at a step wins,
//! as on the server: a step logged again (a job restarted from a checkpoint) keeps what was
//! logged first. A layer statistic goes into a record only with a value for every layer of
//! the run; what is left out is counted in the [`Tally`] and said once in the [`Notes`].

use std::collections::BTreeMap;

use keel_protocol::{Metric, StepRecord};

use super::fold::Key;
use super::{Notes, Tally};

/// What has arrived of one step.
#[derive(Default)]
struct Partial {
    time: Option<f64>,
    tokens: Option<u64>,
    scalars: BTreeMap<String, f64>,
    layers: BTreeMap<String, Vec<Option<f64>>>,
}

/// Steps being assembled, by step number.
#[derive(Default)]
pub struct Steps {
    pending: BTreeMap<u64, Partial>,
    /// The highest step that has had a value.
    pub max_step: Option<u64>,
    /// The highest layer index that has had a value.
    pub max_layer: Option<u32>,
}

impl Steps {
    /// Adds `value` of `key` at `step`, logged at `wall_time`. A second value of the same
    /// series at the same step is counted as a repeat and dropped.
    pub fn add(
        &mut self,
        step: u64,
        wall_time: f64,
        key: &Key,
        value: f64,
        tally: &mut Tally,
        notes: &mut Notes,
    ) {
        let tokens = match (key, whole(value)) {
            (Key::Refused(_) | Key::Skipped, _) => return,
            (Key::Tokens, None) => {
                tally.refused += 1;
                let why = format!("`tokens` is {value} at step {step}, not a token count");
                notes.once("tokens", format!("{why}: such values are left out"));
                return;
            }
            (_, tokens) => tokens,
        };
        let p = self.pending.entry(step).or_default();
        let fresh = match key {
            Key::Scalar(name) if p.scalars.contains_key(name) => false,
            Key::Scalar(name) => {
                p.scalars.insert(name.clone(), value);
                true
            }
            Key::Layer { stat, index } => {
                self.max_layer = self.max_layer.max(Some(*index));
                let values = p.layers.entry(stat.clone()).or_default();
                let i = *index as usize;
                if values.len() <= i {
                    values.resize(i + 1, None);
                }
                let fresh = values[i].is_none();
                values[i].get_or_insert(value);
                fresh
            }
            // Refused and skipped keys returned above.
            Key::Tokens | Key::Refused(_) | Key::Skipped => {
                let fresh = p.tokens.is_none();
                p.tokens = p.tokens.or(tokens);
                fresh
            }
        };
        self.max_step = self.max_step.max(Some(step));
        p.time.get_or_insert(wall_time);
        if !fresh {
            tally.repeats += 1;
        }
    }

    /// Whether steps below `before` (any step when `None`) are waiting.
    pub fn any_before(&self, before: Option<u64>) -> bool {
        match before {
            Some(b) => self.pending.range(..b).next().is_some(),
            None => !self.pending.is_empty(),
        }
    }

    /// Takes the steps below `before` (all when `None`) as records of a run with `layers`
    /// layers. A layer statistic goes into a record only with a value for every layer.
    pub fn take(
        &mut self,
        before: Option<u64>,
        layers: u32,
        tally: &mut Tally,
        notes: &mut Notes,
    ) -> Vec<StepRecord> {
        let rest = match before {
            Some(b) => self.pending.split_off(&b),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut self.pending, rest)
            .into_iter()
            .filter_map(|(step, p)| p.record(step, layers as usize, tally, notes))
            .collect()
    }
}

/// `value` as a token count, when it is one.
fn whole(value: f64) -> Option<u64> {
    (value >= 0.0 && value.fract() == 0.0 && value < i64::MAX as f64).then_some(value as u64)
}

impl Partial {
    /// The step's record; `None` when nothing of it is left to send.
    fn record(
        self,
        step: u64,
        layers: usize,
        tally: &mut Tally,
        notes: &mut Notes,
    ) -> Option<StepRecord> {
        let mut r = StepRecord::at(step);
        r.time = self.time.filter(|t| t.is_finite() && *t >= 0.0);
        r.tokens = self.tokens;
        r.scalars = (self.scalars.into_iter())
            .map(|(name, v)| (name, Metric::new(v)))
            .collect();
        for (stat, mut values) in self.layers {
            let beyond = values.split_off(layers.min(values.len()));
            if beyond.iter().any(Option::is_some) {
                tally.beyond += beyond.iter().flatten().count() as u64;
                let (layer, run) = (
                    beyond.len() + layers - 1,
                    super::plural(layers as u64, "layer"),
                );
                let why = format!("`{stat}` has values for layer {layer}, beyond the run's {run}");
                notes.once(
                    format!("beyond:{stat}"),
                    format!("{why}: those are left out"),
                );
            }
            if values.iter().all(Option::is_none) {
                continue;
            }
            match values.iter().copied().collect::<Option<Vec<f64>>>() {
                Some(v) if v.len() == layers => {
                    r.layers
                        .insert(stat, v.into_iter().map(Metric::new).collect());
                }
                _ => {
                    tally.incomplete += 1;
                    notes.once(
                        format!("incomplete:{stat}"),
                        format!(
                            "`{stat}` lacks some layers' values at step {step}: it is left out \
                             at the steps where it does"
                        ),
                    );
                }
            }
        }
        (values(&r) > 0).then_some(r)
    }
}

/// The numbers a record holds: its scalars, its layers' values and its token count.
pub fn values(r: &StepRecord) -> usize {
    let layers: usize = r.layers.values().map(Vec::len).sum();
    r.scalars.len() + layers + usize::from(r.tokens.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_statistic_is_sent_only_at_steps_where_every_layer_has_a_value() {
        let (mut steps, mut tally, mut notes) =
            (Steps::default(), Tally::default(), Notes::new("t"));
        let stat = |i| Key::Layer {
            stat: "hidden_var".into(),
            index: i,
        };
        for i in 0..3 {
            steps.add(0, 10.0, &stat(i), f64::from(i), &mut tally, &mut notes);
        }
        steps.add(1, 11.0, &stat(0), 5.0, &mut tally, &mut notes);
        steps.add(
            1,
            11.5,
            &Key::Scalar("loss".into()),
            2.0,
            &mut tally,
            &mut notes,
        );
        assert_eq!((steps.max_step, steps.max_layer), (Some(1), Some(2)));

        let got = steps.take(None, 3, &mut tally, &mut notes);
        assert_eq!(got.len(), 2);
        let m = |v: &[f64]| v.iter().copied().map(Metric::new).collect::<Vec<_>>();
        assert_eq!(got[0].layers["hidden_var"], m(&[0.0, 1.0, 2.0]));
        assert_eq!(got[0].time, Some(10.0));
        assert!(got[1].layers.is_empty());
        assert_eq!(got[1].scalars["loss"], Metric(2.0));
        assert_eq!(got[1].time, Some(11.0), "the step's first wall time");
        assert_eq!(tally.incomplete, 1);
        assert_eq!(got.iter().map(values).sum::<usize>(), 4);
    }

    #[test]
    fn the_first_value_of_a_series_at_a_step_wins_and_later_ones_are_repeats() {
        let (mut steps, mut tally, mut notes) =
            (Steps::default(), Tally::default(), Notes::new("t"));
        let loss = Key::Scalar("loss".into());
        steps.add(4, 100.0, &loss, 1.0, &mut tally, &mut notes);
        steps.add(5, 101.0, &loss, 0.9, &mut tally, &mut notes);
        // A restart from step 4's checkpoint logs step 5 again.
        steps.add(5, 200.0, &loss, 7.0, &mut tally, &mut notes);
        steps.add(5, 200.0, &Key::Tokens, 4096.0, &mut tally, &mut notes);
        steps.add(5, 200.0, &Key::Tokens, 8192.0, &mut tally, &mut notes);
        assert!(steps.any_before(Some(5)) && !steps.any_before(Some(4)));
        let first = steps.take(Some(5), 1, &mut tally, &mut notes);
        assert_eq!(first.iter().map(|r| r.step).collect::<Vec<_>>(), [4]);
        let rest = steps.take(None, 1, &mut tally, &mut notes);
        assert_eq!(rest[0].scalars["loss"], Metric(0.9));
        assert_eq!((rest[0].time, rest[0].tokens), (Some(101.0), Some(4096)));
        assert_eq!(tally.repeats, 2);
    }

    #[test]
    fn layers_beyond_the_runs_count_and_fractional_tokens_are_left_out() {
        let (mut steps, mut tally, mut notes) =
            (Steps::default(), Tally::default(), Notes::new("t"));
        for i in 0..3 {
            let key = Key::Layer {
                stat: "g".into(),
                index: i,
            };
            steps.add(0, 1.0, &key, 1.0, &mut tally, &mut notes);
        }
        let only_beyond = Key::Layer {
            stat: "h".into(),
            index: 5,
        };
        steps.add(0, 1.0, &only_beyond, 1.0, &mut tally, &mut notes);
        steps.add(0, 1.0, &Key::Tokens, 12.5, &mut tally, &mut notes);
        let got = steps.take(None, 2, &mut tally, &mut notes);
        assert_eq!(got[0].layers["g"].len(), 2);
        assert!(!got[0].layers.contains_key("h"));
        assert_eq!(got[0].tokens, None);
        assert_eq!((tally.beyond, tally.refused, tally.incomplete), (2, 1, 0));
    }
}
