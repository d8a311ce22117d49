//! A scalar series as a line chart: the mean of each bucket as the line, its min–max range as
//! a band behind it (so spikes show when buckets are wide), and a red marker above every
//! bucket that holds a NaN or an infinity — those are exactly what must not be missed.

use keel_protocol::ScalarSeries;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::colormap::INF;
use super::frame::{Frame, fail, title};
use super::heatmap::bucket_ends;
use super::{Chart, Drawn, ink, short, ticks};

pub struct Line<'a> {
    pub s: &'a ScalarSeries,
    pub title: &'a str,
}

const SIZE: (u32, u32) = (1000, 320);

impl Chart for Line<'_> {
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> Drawn {
        area.fill(&ink::PAPER).map_err(fail)?;
        let s = self.s;
        let ends = bucket_ends(&s.step);
        let finite = |v: &f64| v.is_finite();
        let lo = s
            .min
            .iter()
            .map(|v| v.get())
            .filter(finite)
            .fold(f64::INFINITY, f64::min);
        let hi = s
            .max
            .iter()
            .map(|v| v.get())
            .filter(finite)
            .fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo <= hi { pad(lo, hi) } else { (0.0, 1.0) };
        let x = match (s.step.first(), ends.last()) {
            (Some(a), Some(b)) => (*a as f64, *b as f64),
            _ => (0.0, 1.0),
        };
        let frame = Frame {
            left: 70,
            top: 34,
            right: SIZE.0 as i32 - 20,
            bottom: SIZE.1 as i32 - 44,
            x,
            y: (lo, hi),
            log_y: false,
            whole_x: false,
        };
        self.band(area, &frame, &ends)?;
        self.mean_line(area, &frame)?;
        self.markers(area, &frame)?;
        let y_ticks: Vec<(f64, String)> = ticks(lo, hi, 5)
            .into_iter()
            .map(|v| (v, short(v)))
            .collect();
        frame.axes(area, text, "step", &y_ticks)?;
        if text {
            title(area, self.title, (frame.left, 8))?;
        }
        Ok(())
    }
}

/// A little room above and below the data.
fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let d = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - d, hi + d)
}

impl Line<'_> {
    fn band<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        f: &Frame,
        ends: &[u64],
    ) -> Drawn {
        for (i, step) in self.s.step.iter().enumerate() {
            let (a, b) = (self.s.min[i].get(), self.s.max[i].get());
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            let x0 = f.px(*step as f64);
            let x1 = f.px(ends[i] as f64).max(x0 + 1);
            let rect = Rectangle::new([(x0, f.py(b)), (x1, f.py(a))], ink::BAND.filled());
            area.draw(&rect).map_err(fail)?;
        }
        Ok(())
    }

    /// The means, broken wherever a mean is not finite.
    fn mean_line<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, f: &Frame) -> Drawn {
        let points = self.s.step.iter().zip(&self.s.mean);
        let points = points.map(|(step, mean)| (*step as f64, mean.get()));
        broken_line(area, f, points, ink::LINE.stroke_width(2), false)
    }

    fn markers<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, f: &Frame) -> Drawn {
        let [r, g, b] = INF;
        for (i, step) in self.s.step.iter().enumerate() {
            if self.s.max[i].get().is_finite() && self.s.mean[i].get().is_finite() {
                continue;
            }
            marker(area, f, f.px(*step as f64), RGBColor(r, g, b).into())?;
        }
        Ok(())
    }
}

/// A line through `points` (data coordinates), broken wherever a point cannot be drawn: a
/// value that is not finite, or not above zero on a log axis; a point left alone between
/// two breaks is a dot. `dashed` tells apart the series that share a colour.
pub(super) fn broken_line<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    f: &Frame,
    points: impl IntoIterator<Item = (f64, f64)>,
    style: ShapeStyle,
    dashed: bool,
) -> Drawn {
    let drawable = |x: f64, y: f64| x.is_finite() && y.is_finite() && (!f.log_y || y > 0.0);
    let mut run: Vec<(i32, i32)> = Vec::new();
    let mut pieces = Vec::new();
    for (x, y) in points {
        if drawable(x, y) {
            run.push((f.px(x), f.py(y)));
        } else if !run.is_empty() {
            pieces.push(std::mem::take(&mut run));
        }
    }
    pieces.push(run);
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        // A point between two gaps would draw nothing as a line: a dot instead.
        if let [only] = piece[..] {
            area.draw(&Circle::new(only, 2, style.filled()))
                .map_err(fail)?;
        } else if dashed {
            let path = plotters::element::DashedPathElement::new(piece, 6, 4, style);
            area.draw(&path).map_err(fail)?;
        } else {
            area.draw(&PathElement::new(piece, style)).map_err(fail)?;
        }
    }
    Ok(())
}

/// The mark of a non-finite value at pixel column `x`: a red triangle hanging from the top
/// of the frame and a thin rule in `rule` down to its bottom, never silently a gap.
pub(super) fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    f: &Frame,
    x: i32,
    rule: ShapeStyle,
) -> Drawn {
    let [r, g, b] = INF;
    let tip = [(x - 5, f.top + 1), (x + 5, f.top + 1), (x, f.top + 10)];
    area.draw(&Polygon::new(tip, RGBColor(r, g, b).filled()))
        .map_err(fail)?;
    let rule = PathElement::new([(x, f.top + 10), (x, f.bottom)], rule);
    area.draw(&rule).map_err(fail)
}
