//! The plot rectangle of a chart: data → pixel mapping, border, ticks and labels.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Drawn, ink, short, ticks};

/// A plot area in pixels (`left..right`, `top..bottom`) showing `x` and `y` ranges.
pub struct Frame {
    pub left: i32,
    pub top: i32,
    pub right: i32,
    pub bottom: i32,
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub log_y: bool,
    /// Ticks on x only at whole numbers (layers).
    pub whole_x: bool,
}

pub fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Frame {
    pub fn px(&self, x: f64) -> i32 {
        let (a, b) = self.x;
        let f = if b > a { (x - a) / (b - a) } else { 0.5 };
        self.left + (f * (self.right - self.left) as f64).round() as i32
    }

    pub fn py(&self, y: f64) -> i32 {
        let (mut a, mut b, mut v) = (self.y.0, self.y.1, y);
        if self.log_y {
            (a, b, v) = (a.ln(), b.ln(), v.max(self.y.0).ln());
        }
        let f = if b > a { (v - a) / (b - a) } else { 0.5 };
        self.bottom - (f * (self.bottom - self.top) as f64).round() as i32
    }

    /// Border, ticks below (named `x_name` unless it is empty), value ticks at the left
    /// (`y_ticks`, already labelled).
    pub fn axes<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
        x_name: &str,
        y_ticks: &[(f64, String)],
    ) -> Drawn {
        let border = Rectangle::new(
            [(self.left, self.top), (self.right, self.bottom)],
            ink::GRID.stroke_width(1),
        );
        area.draw(&border).map_err(fail)?;
        if !text {
            return Ok(());
        }
        // About one label per 100 px, so narrow plots do not crowd theirs.
        let n = ((self.right - self.left) / 100).clamp(2, 6) as usize;
        let whole = |t: &f64| !self.whole_x || t.fract() == 0.0;
        for t in ticks(self.x.0, self.x.1, n).into_iter().filter(whole) {
            let x = self.px(t);
            let tick = PathElement::new([(x, self.bottom), (x, self.bottom + 4)], ink::GRID);
            area.draw(&tick).map_err(fail)?;
            label(
                area,
                &short(t),
                (x, self.bottom + 6),
                Pos::new(HPos::Center, VPos::Top),
            )?;
        }
        if !x_name.is_empty() {
            let mid = (self.left + self.right) / 2;
            label(
                area,
                x_name,
                (mid, self.bottom + 22),
                Pos::new(HPos::Center, VPos::Top),
            )?;
        }
        for (v, s) in y_ticks {
            let y = self.py(*v);
            let tick = PathElement::new([(self.left - 4, y), (self.left, y)], ink::GRID);
            area.draw(&tick).map_err(fail)?;
            label(
                area,
                s,
                (self.left - 6, y),
                Pos::new(HPos::Right, VPos::Center),
            )?;
        }
        Ok(())
    }
}

/// Draws `s` at `at`, anchored by `pos`, in the chart's text style.
pub fn label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    at: (i32, i32),
    pos: Pos,
) -> Drawn {
    let style = ("sans-serif", 13).into_font().color(&ink::TEXT).pos(pos);
    area.draw(&Text::new(s.to_owned(), at, style)).map_err(fail)
}

/// A title (a chart's, or a panel's in a figure), its top left corner at `at`.
pub fn title<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &str, at: (i32, i32)) -> Drawn {
    let style = ("sans-serif", 15)
        .into_font()
        .color(&ink::TEXT)
        .pos(Pos::new(HPos::Left, VPos::Top));
    area.draw(&Text::new(s.to_owned(), at, style)).map_err(fail)
}
