//! A layer × step heatmap: one column per bucket, one row per layer (layer 0 at the bottom),
//! coloured by the bucket's `max` (or the `mean` or `min` asked for) so a one-step spike is never averaged away; a legend with
//! the scale's range and the colours of NaN and ±Inf.

use keel_protocol::{LayerMatrix, Metric};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colormap::{self, Scale};
use super::frame::{Frame, fail, label, title};
use super::{Chart, Drawn, ink, short};

pub struct Heatmap<'a> {
    pub m: &'a LayerMatrix,
    pub title: &'a str,
    pub by: super::CellValue,
}

const WIDTH: u32 = 1200;
const LEFT: i32 = 64;
const TOP: i32 = 34;
const LEGEND: i32 = 120;
const BOTTOM: i32 = 44;

/// Rows are at least 3 px, at most 10; the plot between 160 and 480 px high.
fn plot_height(layers: u32) -> i32 {
    (layers as i32 * 10).clamp(160, 480)
}

/// Where each bucket ends (exclusive). Buckets have one width, the median distance between
/// bucket starts; a bucket never reaches into the next one, so missing buckets stay empty.
pub fn bucket_ends(steps: &[u64]) -> Vec<u64> {
    let mut gaps: Vec<u64> = steps.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let width = gaps.get(gaps.len() / 2).copied().unwrap_or(1).max(1);
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| match steps.get(i + 1) {
            Some(next) => (*next).min(s + width),
            None => s + width,
        })
        .collect()
}

impl Chart for Heatmap<'_> {
    fn size(&self) -> (u32, u32) {
        (WIDTH, (TOP + plot_height(self.m.layers) + BOTTOM) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> Drawn {
        area.fill(&ink::PAPER).map_err(fail)?;
        let m = self.m;
        let ends = bucket_ends(&m.step);
        let x = match (m.step.first(), ends.last()) {
            (Some(a), Some(b)) => (*a as f64, *b as f64),
            _ => (0.0, 1.0),
        };
        let frame = Frame {
            left: LEFT,
            top: TOP,
            right: WIDTH as i32 - LEGEND,
            bottom: TOP + plot_height(m.layers),
            x,
            y: (0.0, m.layers.max(1) as f64),
            log_y: false,
            whole_x: false,
        };
        let rows = self.by.rows(m);
        let scale = Scale::fit(rows.iter().flatten().map(|v| v.get()));
        area.draw(&Rectangle::new(
            [(frame.left, frame.top), (frame.right, frame.bottom)],
            ink::EMPTY.filled(),
        ))
        .map_err(fail)?;
        if let Some(scale) = scale {
            cells(area, &frame, &m.step, &ends, rows, &scale)?;
            colour_bar(
                area,
                (frame.right + 16, frame.top, frame.bottom),
                &scale,
                text,
            )?;
        }
        let y_ticks: Vec<(f64, String)> = layer_ticks(m.layers)
            .into_iter()
            .map(|l| (l as f64 + 0.5, l.to_string()))
            .collect();
        frame.axes(area, text, "step", &y_ticks)?;
        if text {
            title(area, self.title, (LEFT, 8))?;
            if scale.is_none() {
                let mid = (
                    (frame.left + frame.right) / 2,
                    (frame.top + frame.bottom) / 2,
                );
                label(area, "no data", mid, Pos::new(HPos::Center, VPos::Center))?;
            }
        }
        Ok(())
    }
}

/// Colours the cells of a layer × step matrix inside `frame`: column i spans
/// `steps[i]..ends[i]`, row l the layer l (layer 0 at the bottom). Neighbouring cells of one
/// row that come out the same colour are drawn as one rectangle, which keeps an SVG of a
/// slowly changing statistic several times smaller and draws the same pixels.
pub(super) fn cells<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    frame: &Frame,
    steps: &[u64],
    ends: &[u64],
    rows: &[Vec<Metric>],
    scale: &Scale,
) -> Drawn {
    let layers = rows.iter().map(Vec::len).max().unwrap_or(0);
    let xs: Vec<(i32, i32)> = steps
        .iter()
        .zip(ends)
        .map(|(s, e)| {
            let x0 = frame.px(*s as f64);
            // At least one pixel wide: a lone spike bucket must not vanish between pixels.
            (x0, frame.px(*e as f64).max(x0 + 1))
        })
        .collect();
    for layer in 0..layers {
        let (y0, y1) = (frame.py(layer as f64 + 1.0), frame.py(layer as f64));
        let mut pending: Option<(i32, i32, [u8; 3])> = None;
        for (column, &(x0, x1)) in rows.iter().zip(&xs) {
            let Some(v) = column.get(layer) else { continue };
            let colour = scale.color(v.get());
            match &mut pending {
                Some((_, end, c)) if *c == colour && x0 <= *end => *end = x1,
                slot => {
                    if let Some(done) = slot.replace((x0, x1, colour)) {
                        cell(area, done, (y0, y1))?;
                    }
                }
            }
        }
        if let Some(done) = pending {
            cell(area, done, (y0, y1))?;
        }
    }
    Ok(())
}

fn cell<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x0, x1, [r, g, b]): (i32, i32, [u8; 3]),
    (y0, y1): (i32, i32),
) -> Drawn {
    let rect = Rectangle::new([(x0, y0), (x1, y1)], RGBColor(r, g, b).filled());
    area.draw(&rect).map_err(fail)
}

/// Which layers get a label: all of a few, else about eight evenly spaced.
fn layer_ticks(layers: u32) -> Vec<u32> {
    let every = layers.div_ceil(8).max(1);
    (0..layers)
        .filter(|l| l % every == 0 || *l == layers - 1)
        .collect()
}

/// The colour bar with its range, and under it swatches for NaN and ±Inf: 14 px wide at `x`
/// (labels to its right), from `top` down to `end` (the swatches take the last 44 px).
pub(super) fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, top, end): (i32, i32, i32),
    scale: &Scale,
    text: bool,
) -> Drawn {
    let bottom = end - 44;
    let slices = 64;
    for k in 0..slices {
        let y0 = bottom - (bottom - top) * (k + 1) / slices;
        let y1 = bottom - (bottom - top) * k / slices;
        let [r, g, b] = colormap::color_at((k as f64 + 0.5) / slices as f64);
        let slice = Rectangle::new([(x, y0), (x + 14, y1)], RGBColor(r, g, b).filled());
        area.draw(&slice).map_err(fail)?;
    }
    for (i, [r, g, b]) in [colormap::NAN, colormap::INF].into_iter().enumerate() {
        let y = end - 34 + i as i32 * 18;
        let swatch = Rectangle::new([(x, y), (x + 14, y + 12)], RGBColor(r, g, b).filled());
        area.draw(&swatch).map_err(fail)?;
    }
    if !text {
        return Ok(());
    }
    let at = |y| (x + 20, y);
    let left = |v| Pos::new(HPos::Left, v);
    label(area, &short(scale.hi), at(top), left(VPos::Top))?;
    label(area, &short(scale.lo), at(bottom), left(VPos::Bottom))?;
    let kind = if scale.log { "log" } else { "linear" };
    label(area, kind, at((top + bottom) / 2), left(VPos::Center))?;
    label(area, "NaN", at(end - 28), left(VPos::Center))?;
    label(area, "±∞", at(end - 10), left(VPos::Center))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_end_where_the_next_begins_and_gaps_stay_empty() {
        assert_eq!(bucket_ends(&[0, 1, 2]), vec![1, 2, 3]);
        assert_eq!(bucket_ends(&[0, 16, 32, 96]), vec![16, 32, 48, 112]);
        assert_eq!(bucket_ends(&[7]), vec![8]);
        assert_eq!(layer_ticks(4), vec![0, 1, 2, 3]);
        assert_eq!(layer_ticks(64), vec![0, 8, 16, 24, 32, 40, 48, 56, 63]);
    }
}
