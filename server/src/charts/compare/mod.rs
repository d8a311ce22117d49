//! The compare page as one figure, for a report: a legend naming every run, the runs' loss
//! curves overlaid (EMA-smoothed, over steps or tokens, linear or log y), the depth profile of
//! a layer statistic at one step, and the runs' heatmaps side by side on one colour scale.
//!
//! A run keeps one colour throughout, the page's: `ink::SERIES` by run index. The palette has
//! seven colours; from the eighth run on, lines are dashed so that runs sharing a colour stay
//! apart. Like every chart here it draws the buckets it is given and queries nothing; the
//! [`Layout`] says how many buckets each plot wants.

mod layout;
mod panels;

use keel_protocol::{LayerMatrix, ScalarSeries};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::frame::{fail, label, title};
use super::{Chart, Drawn, ink};

pub use layout::{HEIGHT, LABEL_CHARS, Layout, Rect, WIDTH};

/// What the loss curves are drawn over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    Steps,
    Tokens,
}

/// One run's part of the figure; a part the run lacks is `None` and drawn as missing.
#[derive(Clone, Debug, Default)]
pub struct CompareRun {
    /// The legend label: the run's name, and its variant when it has one.
    pub label: String,
    pub loss: Option<ScalarSeries>,
    /// The run's `tokens` series at the buckets of `loss` (for the tokens axis).
    pub tokens: Option<ScalarSeries>,
    /// The statistic per layer at one step: `(step, values)`.
    pub profile: Option<(u64, Vec<f64>)>,
    pub heat: Option<LayerMatrix>,
}

/// The figure: what to draw, how, and where ([`Layout`] built for these runs).
#[derive(Clone, Debug)]
pub struct Comparison {
    pub title: String,
    /// The scalar overlaid, `loss` unless asked otherwise.
    pub key: String,
    /// The layer statistic of the depth profile and heatmaps.
    pub stat: Option<String>,
    /// The step of the depth profile (runs that stop earlier show their last step).
    pub step: Option<u64>,
    pub x: XAxis,
    pub log_y: bool,
    /// The EMA weight on the past, in [0, 1).
    pub smooth: f64,
    /// Which bucket value colours the heatmaps' cells.
    pub by: crate::charts::CellValue,
    pub runs: Vec<CompareRun>,
    pub layout: Layout,
}

/// Exponential moving average with weight `a` on the past, as the compare page smooths:
/// non-finite values pass through unsmoothed and do not poison the average, so a NaN shows.
pub fn ema(values: &[f64], a: f64) -> Vec<f64> {
    let mut acc: Option<f64> = None;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return v;
            }
            let next = acc.map_or(v, |acc| a * acc + (1.0 - a) * v);
            acc = Some(next);
            next
        })
        .collect()
}

/// Tokens seen at `step`, interpolated between the known counts `(steps[i], tokens[i])`
/// (ascending steps) and held at the ends, as the run page does for its tokens axis.
pub fn tokens_at(steps: &[u64], tokens: &[f64], step: u64) -> f64 {
    let n = steps.len().min(tokens.len());
    if n == 0 {
        return f64::NAN;
    }
    let i = steps[..n].partition_point(|s| *s <= step);
    if i == 0 {
        return tokens[0];
    }
    if i == n {
        return tokens[n - 1];
    }
    let (s0, s1, t0, t1) = (steps[i - 1], steps[i], tokens[i - 1], tokens[i]);
    t0 + (t1 - t0) * (step - s0) as f64 / (s1 - s0) as f64
}

/// The colour of run `i`, and whether its lines are dashed (the palette came round again).
pub(crate) fn run_style(i: usize) -> (RGBColor, bool) {
    (ink::SERIES[i % ink::SERIES.len()], i >= ink::SERIES.len())
}

/// A line `len` px long from `(x, y)` in run `i`'s colour and style: the run's sign in the
/// legend and over its heatmap.
pub(crate) fn sample<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    i: usize,
    (x, y): (i32, i32),
    len: i32,
) -> Drawn {
    let (colour, dashed) = run_style(i);
    let style = colour.stroke_width(3);
    let ends = [(x, y), (x + len, y)];
    if dashed {
        let dashes = plotters::element::DashedPathElement::new(ends, 6, 4, style);
        area.draw(&dashes).map_err(fail)
    } else {
        area.draw(&PathElement::new(ends, style)).map_err(fail)
    }
}

/// `s` cut to `max` characters, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

impl Chart for Comparison {
    fn size(&self) -> (u32, u32) {
        self.layout.size
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> Drawn {
        area.fill(&ink::PAPER).map_err(fail)?;
        if text {
            title(area, &self.title, (16, 10))?;
        }
        self.legend(area, text)?;
        self.loss_panel(area, text)?;
        if let Some(p) = &self.layout.layers {
            self.depth_panel(area, &p.depth, text)?;
            self.heat_panel(area, p, text)?;
        }
        Ok(())
    }
}

impl Comparison {
    /// A line sample in each run's colour and style, and its label.
    fn legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> Drawn {
        for (i, (run, &(x, y))) in self.runs.iter().zip(&self.layout.keys).enumerate() {
            let y = y + 9;
            sample(area, i, (x, y), 24)?;
            if text {
                let at = Pos::new(HPos::Left, VPos::Center);
                label(area, &clip(&run.label, LABEL_CHARS), (x + 30, y), at)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_lets_non_finite_values_through_without_poisoning_the_average() {
        let got = ema(&[1.0, 3.0, f64::NAN, 5.0, f64::INFINITY], 0.5);
        assert_eq!(got[..2], [1.0, 2.0]);
        assert!(got[2].is_nan());
        // The NaN did not reach the average: 0.5·2 + 0.5·5.
        assert_eq!(got[3], 3.5);
        assert_eq!(got[4], f64::INFINITY);
        assert_eq!(ema(&[4.0, 8.0], 0.0), [4.0, 8.0]);
    }

    #[test]
    fn tokens_are_interpolated_between_known_counts_and_held_at_the_ends() {
        let (steps, tokens) = ([10, 20, 40], [1000.0, 2000.0, 6000.0]);
        assert_eq!(tokens_at(&steps, &tokens, 0), 1000.0);
        assert_eq!(tokens_at(&steps, &tokens, 15), 1500.0);
        assert_eq!(tokens_at(&steps, &tokens, 30), 4000.0);
        assert_eq!(tokens_at(&steps, &tokens, 40), 6000.0);
        assert_eq!(tokens_at(&steps, &tokens, 99), 6000.0);
        assert!(tokens_at(&[], &[], 5).is_nan());
    }

    #[test]
    fn long_labels_are_cut_and_colours_come_round_dashed() {
        assert_eq!(clip("baseline", 48), "baseline");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(run_style(0), (ink::SERIES[0], false));
        assert_eq!(run_style(7), (ink::SERIES[0], true));
    }
}
