//! The three panels of a comparison: loss curves, depth profile, heatmaps on one scale.

use keel_protocol::Metric;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::layout::{LayerPanels, Rect};
use super::{CompareRun, Comparison, XAxis, clip, ema, run_style, sample, tokens_at};
use crate::charts::colormap::Scale;
use crate::charts::frame::{Frame, fail, label, title};
use crate::charts::heatmap::{bucket_ends, cells, colour_bar};
use crate::charts::line::{broken_line, marker};
use crate::charts::{Drawn, ink, log_ticks, short, ticks};

/// One run's loss curve in data coordinates, and the x of its non-finite buckets.
struct Curve {
    points: Vec<(f64, f64)>,
    bad: Vec<f64>,
}

/// The smallest and largest of the values that can be drawn (finite; above zero on a log
/// axis), or `None`.
fn extent(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    (lo <= hi).then_some((lo, hi))
}

/// Room around the data, as the browser leaves it: 10 % (log) or 5 % of the range.
fn padded((lo, hi): (f64, f64), log: bool) -> (f64, f64) {
    match (log, hi > lo) {
        (true, true) => (lo / 1.1, hi * 1.1),
        (true, false) => (lo / 2.0, hi * 2.0),
        (false, _) => {
            let d = if hi > lo {
                (hi - lo) * 0.05
            } else {
                lo.abs().max(1.0) * 0.05
            };
            (lo - d, hi + d)
        }
    }
}

fn value_ticks((lo, hi): (f64, f64), log: bool) -> Vec<(f64, String)> {
    let values = if log {
        log_ticks(lo, hi)
    } else {
        ticks(lo, hi, 5)
    };
    values.into_iter().map(|v| (v, short(v))).collect()
}

fn frame(r: &Rect, x: (f64, f64), y: (f64, f64), log_y: bool) -> Frame {
    Frame {
        left: r.left,
        top: r.top,
        right: r.right,
        bottom: r.bottom,
        x,
        y,
        log_y,
        whole_x: false,
    }
}

fn middle<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Rect, s: &str) -> Drawn {
    let at = ((r.left + r.right) / 2, (r.top + r.bottom) / 2);
    label(area, s, at, Pos::new(HPos::Center, VPos::Center))
}

impl Comparison {
    /// The run's smoothed loss over steps or tokens; `None` when there is nothing to draw
    /// (no such series, or no token counts on a tokens axis).
    fn curve(&self, run: &CompareRun) -> Option<Curve> {
        let s = run.loss.as_ref()?;
        let x: Box<dyn Fn(u64) -> f64> = match self.x {
            XAxis::Steps => Box::new(|step| step as f64),
            XAxis::Tokens => {
                let t = run.tokens.as_ref().filter(|t| !t.step.is_empty())?;
                let counts: Vec<f64> = t.min.iter().map(|v| v.get()).collect();
                Box::new(move |step| tokens_at(&t.step, &counts, step))
            }
        };
        let means: Vec<f64> = s.mean.iter().map(|v| v.get()).collect();
        let smoothed = ema(&means, self.smooth);
        let points = s.step.iter().map(|st| x(*st)).zip(smoothed).collect();
        let bad = (0..s.step.len())
            .filter(|&i| !(s.max[i].get().is_finite() && s.mean[i].get().is_finite()))
            .map(|i| x(s.step[i]))
            .collect();
        Some(Curve { points, bad })
    }

    pub(super) fn loss_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> Drawn {
        let r = &self.layout.loss;
        let curves: Vec<Option<Curve>> = self.runs.iter().map(|run| self.curve(run)).collect();
        let all = || curves.iter().flatten().flat_map(|c| c.points.iter());
        let xs = extent(all().map(|p| p.0), false);
        let ys = extent(all().map(|p| p.1), self.log_y);
        let log = self.log_y && ys.is_some();
        let y = ys.map_or((0.0, 1.0), |e| padded(e, log));
        let x = xs.map_or(
            (0.0, 1.0),
            |(a, b)| if b > a { (a, b) } else { (a, a + 1.0) },
        );
        let f = frame(r, x, y, log);
        let x_name = match self.x {
            XAxis::Steps => "step",
            XAxis::Tokens => "tokens",
        };
        f.axes(area, text, x_name, &value_ticks(y, log))?;
        for (i, curve) in curves.iter().enumerate() {
            let Some(c) = curve else { continue };
            let (colour, dashed) = run_style(i);
            let style = colour.stroke_width(2);
            broken_line(area, &f, c.points.iter().copied(), style, dashed)?;
            for bx in c.bad.iter().filter(|x| x.is_finite()) {
                marker(area, &f, f.px(*bx), colour.mix(0.5).into())?;
            }
        }
        if !text {
            return Ok(());
        }
        let mut head = format!("{} · EMA smoothing {:.2}", self.key, self.smooth);
        if log {
            head.push_str(" · log y");
        }
        if self.x == XAxis::Tokens && curves.iter().any(Option::is_none) {
            head.push_str(" · runs without token counts left out");
        }
        title(area, &head, r.heading())?;
        if xs.is_none() {
            middle(area, r, "no data")?;
        }
        Ok(())
    }

    pub(super) fn depth_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        r: &Rect,
        text: bool,
    ) -> Drawn {
        let profiles: Vec<Option<&(u64, Vec<f64>)>> =
            self.runs.iter().map(|run| run.profile.as_ref()).collect();
        let layers = profiles
            .iter()
            .flatten()
            .map(|p| p.1.len())
            .max()
            .unwrap_or(0);
        let ys = extent(
            profiles.iter().flatten().flat_map(|p| p.1.iter().copied()),
            true,
        );
        let y = ys.map_or((0.1, 10.0), |e| padded(e, true));
        let x = (0.0, layers.saturating_sub(1).max(1) as f64);
        let f = Frame {
            whole_x: true,
            ..frame(r, x, y, true)
        };
        let y_ticks = if ys.is_some() {
            value_ticks(y, true)
        } else {
            Vec::new()
        };
        f.axes(area, text, "layer", &y_ticks)?;
        for (i, p) in profiles.iter().enumerate() {
            let Some((_, values)) = p else { continue };
            let (colour, dashed) = run_style(i);
            let points = values.iter().enumerate().map(|(l, v)| (l as f64, *v));
            broken_line(area, &f, points.clone(), colour.stroke_width(2), dashed)?;
            for (l, v) in points {
                if v.is_finite() && v > 0.0 {
                    let dot = Circle::new((f.px(l), f.py(v)), 3, colour.filled());
                    area.draw(&dot).map_err(fail)?;
                } else if !v.is_finite() {
                    marker(area, &f, f.px(l), colour.mix(0.5).into())?;
                }
            }
        }
        if !text {
            return Ok(());
        }
        let stat = self.stat.as_deref().unwrap_or("");
        let mut head = format!("{stat} by layer (log y)");
        if let Some(step) = self.step {
            head.push_str(&format!(" at step {step}"));
        }
        if profiles.iter().flatten().any(|p| Some(p.0) != self.step) {
            head.push_str(" · runs that stop earlier at their last step");
        }
        title(area, &head, r.heading())?;
        if ys.is_none() {
            middle(area, r, "no data")?;
        }
        Ok(())
    }

    pub(super) fn heat_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        p: &LayerPanels,
        text: bool,
    ) -> Drawn {
        let heats = || self.runs.iter().filter_map(|run| run.heat.as_ref());
        let by = self.by;
        let values = heats().flat_map(|m| by.rows(m).iter().flatten().map(|v| Metric::get(*v)));
        let scale = Scale::fit(values);
        for (i, (run, r)) in self.runs.iter().zip(&p.cells).enumerate() {
            heat_cell(area, run, r, by, scale.as_ref(), text)?;
            let (x, y) = (r.left - 30, r.top - 11);
            sample(area, i, (x, y), 18)?;
            if text {
                let name = clip(&run.label, ((r.right - x - 24) / 8).max(4) as usize);
                label(area, &name, (x + 24, y), Pos::new(HPos::Left, VPos::Center))?;
            }
        }
        if let Some(scale) = &scale {
            colour_bar(area, p.bar, scale, text)?;
        }
        if text {
            let stat = self.stat.as_deref().unwrap_or("");
            let head = format!(
                "{stat} · layer × step, {} per bucket, one colour scale",
                by.name()
            );
            title(area, &head, p.heading)?;
        }
        Ok(())
    }
}

/// One run's heatmap in `r`: layer 0 at the bottom, its own steps on x, the shared scale.
fn heat_cell<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    run: &CompareRun,
    r: &Rect,
    by: crate::charts::CellValue,
    scale: Option<&Scale>,
    text: bool,
) -> Drawn {
    let empty = Rectangle::new([(r.left, r.top), (r.right, r.bottom)], ink::EMPTY.filled());
    area.draw(&empty).map_err(fail)?;
    let m = run.heat.as_ref().filter(|m| !m.step.is_empty());
    let layers = m.map_or(1, |m| m.layers.max(1));
    let ends = m.map(|m| bucket_ends(&m.step)).unwrap_or_default();
    let x = match (m.and_then(|m| m.step.first()), ends.last()) {
        (Some(a), Some(b)) => (*a as f64, *b as f64),
        _ => (0.0, 1.0),
    };
    let f = frame(r, x, (0.0, layers as f64), false);
    if let (Some(m), Some(scale)) = (m, scale) {
        cells(area, &f, &m.step, &ends, by.rows(m), scale)?;
    }
    let y_ticks = match m {
        Some(_) => vec![
            (0.5, "0".into()),
            (layers as f64 - 0.5, (layers - 1).to_string()),
        ],
        None => Vec::new(),
    };
    f.axes(area, text, "", &y_ticks)?;
    if text && m.is_none() {
        middle(area, r, "no data")?;
    }
    Ok(())
}
