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
            title(area, self.title, frame.left)?;
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
        let mut run: Vec<(i32, i32)> = Vec::new();
        let points = self.s.step.iter().zip(&self.s.mean);
        for (step, mean) in points {
            let v = mean.get();
            if v.is_finite() {
                run.push((f.px(*step as f64), f.py(v)));
                continue;
            }
            let done = std::mem::take(&mut run);
            area.draw(&PathElement::new(done, ink::LINE.stroke_width(2)))
                .map_err(fail)?;
        }
        area.draw(&PathElement::new(run, ink::LINE.stroke_width(2)))
            .map_err(fail)
    }

    fn markers<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, f: &Frame) -> Drawn {
        let [r, g, b] = INF;
        for (i, step) in self.s.step.iter().enumerate() {
            if self.s.max[i].get().is_finite() && self.s.mean[i].get().is_finite() {
                continue;
            }
            let x = f.px(*step as f64);
            let tip = [(x - 5, f.top + 1), (x + 5, f.top + 1), (x, f.top + 10)];
            area.draw(&Polygon::new(tip, RGBColor(r, g, b).filled()))
                .map_err(fail)?;
            let rule = PathElement::new([(x, f.top + 10), (x, f.bottom)], RGBColor(r, g, b));
            area.draw(&rule).map_err(fail)?;
        }
        Ok(())
    }
}
