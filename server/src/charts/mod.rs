//! Charts rendered on the server with plotters, as PNG or SVG: layer heatmaps, scalar
//! series and the whole comparison of several runs, for reports and for readers without
//! JavaScript.
//!
//! They draw what series queries answered ([`LayerMatrix`], [`ScalarSeries`]) and never query
//! anything themselves. Heatmaps colour each bucket by its `max` unless asked otherwise
//! ([`CellValue`]), so a one-step spike shows at every zoom, with the scale of [`colormap`]
//! that the browser shares.
//!
//! Text needs a font. Rather than link the system's fontconfig and freetype, the charts draw
//! with DejaVu Sans built into the binary (the `dejavu` crate; the DejaVu fonts' licence lets
//! them be embedded and shipped) through plotters' `ab_glyph` renderer, so a `keel` copied to
//! a machine without fonts still labels its charts. `KEEL_FONT` names another TrueType file to
//! use instead. An SVG names the family and the viewer's own fonts render it.

pub mod colormap;
pub mod compare;
mod frame;
mod heatmap;
mod line;

pub use heatmap::bucket_ends;

use std::sync::OnceLock;

use anyhow::anyhow;
use keel_protocol::{LayerMatrix, ScalarSeries};
use plotters::coord::Shift;
use plotters::prelude::*;

/// The image formats a chart is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// Splits `hidden_var.png` into `("hidden_var", Png)`; `None` without such an ending.
    pub fn split(name: &str) -> Option<(&str, Format)> {
        if let Some(base) = name.strip_suffix(".png") {
            Some((base, Format::Png))
        } else {
            name.strip_suffix(".svg").map(|base| (base, Format::Svg))
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Svg => "image/svg+xml",
        }
    }
}

/// Which of a bucket's values colours its heatmap cell. `Max` by default everywhere (the run
/// page, the compare page, the PNG and SVG endpoints, the exported comparison), so that a
/// one-step spike is never averaged away; the query parameter `by` picks another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CellValue {
    #[default]
    Max,
    Mean,
    Min,
}

impl CellValue {
    pub const NAMES: [&'static str; 3] = ["max", "mean", "min"];

    /// `?by=`: absent is `max`; anything but the three names is refused.
    pub fn parse(by: Option<&str>) -> Result<Self, String> {
        match by {
            None | Some("max") => Ok(CellValue::Max),
            Some("mean") => Ok(CellValue::Mean),
            Some("min") => Ok(CellValue::Min),
            Some(other) => Err(format!("`by` is `max`, `mean` or `min`, not `{other}`")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CellValue::Max => "max",
            CellValue::Mean => "mean",
            CellValue::Min => "min",
        }
    }

    /// The buckets' rows of this value.
    pub fn rows(self, m: &LayerMatrix) -> &[Vec<keel_protocol::Metric>] {
        match self {
            CellValue::Max => &m.max,
            CellValue::Mean => &m.mean,
            CellValue::Min => &m.min,
        }
    }
}

/// A heatmap of `m` (layer × step, colour = each bucket's `by`) under `title`.
pub fn heatmap(
    m: &LayerMatrix,
    title: &str,
    by: CellValue,
    format: Format,
) -> anyhow::Result<Vec<u8>> {
    render(format, &heatmap::Heatmap { m, title, by })
}

/// A line chart of `s` (mean per bucket, min–max band, markers at non-finite buckets).
pub fn scalar_chart(s: &ScalarSeries, title: &str, format: Format) -> anyhow::Result<Vec<u8>> {
    render(format, &line::Line { s, title })
}

/// The comparison figure of [`compare::Comparison`]: loss curves, depth profiles and
/// heatmaps of several runs, on the layout it was built with.
pub fn comparison(c: &compare::Comparison, format: Format) -> anyhow::Result<Vec<u8>> {
    render(format, c)
}

/// What a chart's drawing returns: plotters' error, made printable.
pub(crate) type Drawn = Result<(), String>;

/// A chart that can draw itself on any plotters backend.
pub(crate) trait Chart {
    fn size(&self) -> (u32, u32);
    /// Draws on `area`; `text` says whether labels can be drawn (a font is there).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> Drawn;
}

/// Draws `chart` on a backend of `format` and returns the encoded image.
fn render(format: Format, chart: &impl Chart) -> anyhow::Result<Vec<u8>> {
    let (w, h) = chart.size();
    match format {
        Format::Png => {
            let mut rgb = vec![0u8; (w * h * 3) as usize];
            {
                let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                chart
                    .draw(&area, font_ready())
                    .map_err(|e| anyhow!("drawing a PNG: {e}"))?;
                area.present().map_err(|e| anyhow!("drawing a PNG: {e}"))?;
            }
            encode_png(&rgb, w, h)
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                chart
                    .draw(&area, true)
                    .map_err(|e| anyhow!("drawing an SVG: {e}"))?;
                area.present().map_err(|e| anyhow!("drawing an SVG: {e}"))?;
            }
            Ok(svg.into_bytes())
        }
    }
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Registers the font once: the file `KEEL_FONT` names when it loads, else the built-in one.
/// True when PNG text can be drawn (always, unless the built-in font were unreadable).
pub fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if let Some(path) = std::env::var_os("KEEL_FONT") {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    // plotters keeps fonts for the life of the process: one leak, once.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return true;
                    }
                    tracing::warn!(
                        ?path,
                        "KEEL_FONT is not a usable font; using the built-in one"
                    );
                }
                Err(e) => tracing::warn!(?path, "reading KEEL_FONT: {e}; using the built-in one"),
            }
        }
        let ok = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok();
        if !ok {
            tracing::error!("the built-in font does not load: PNG charts are drawn without text");
        }
        ok
    })
}

/// The colours of the images: a light page, like a printed report.
pub(crate) mod ink {
    use plotters::style::RGBColor;
    pub const PAPER: RGBColor = RGBColor(255, 255, 255);
    pub const TEXT: RGBColor = RGBColor(40, 44, 52);
    pub const GRID: RGBColor = RGBColor(200, 204, 212);
    pub const EMPTY: RGBColor = RGBColor(236, 238, 242);
    pub const LINE: RGBColor = RGBColor(37, 99, 235);
    pub const BAND: RGBColor = RGBColor(191, 208, 247);
    /// One colour per run, in run order: the light theme's `--series` of `static/keel.css`,
    /// so a run has the same colour on the compare page and in its exported figure.
    pub const SERIES: [RGBColor; 7] = [
        RGBColor(0x25, 0x63, 0xeb),
        RGBColor(0xe8, 0x71, 0x0a),
        RGBColor(0x0f, 0x9d, 0x58),
        RGBColor(0x93, 0x34, 0xe6),
        RGBColor(0xc5, 0x22, 0x1f),
        RGBColor(0x12, 0xa4, 0xaf),
        RGBColor(0xb0, 0x87, 0x0a),
    ];
}

/// About `n` round values spanning `[lo, hi]` (1, 2 or 5 times a power of ten apart).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Round values for a log axis in `[lo, hi]` (both above zero): 1, 2 and 5 times powers of
/// ten over a few decades, powers of ten alone over more. Where fewer than two of those fit
/// (a range inside one decade), the round values of a linear axis instead, which the
/// browser's `logTicks` does not do: it labels the ends.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return ticks(lo, hi, 4);
    }
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mult: &[f64] = if e1 - e0 <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let out: Vec<f64> = (e0..=e1)
        .flat_map(|e| mult.iter().map(move |m| m * 10f64.powi(e)))
        .filter(|v| *v >= lo && *v <= hi)
        .collect();
    if out.len() >= 2 {
        out
    } else {
        ticks(lo, hi, 4)
    }
}

/// A short label: `12`, `0.0031`, `2.5e-5`, `1.2M`; `NaN`, `∞`.
pub fn short(v: f64) -> String {
    if let Some(word) = crate::views::format::special(v) {
        return word.into();
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 1e-3 {
        // Four significant digits, as the browser writes them.
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        trim(format!("{v:.decimals$}"))
    } else {
        format!("{v:.1e}")
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(
            ticks(0.0, 1000.0, 5),
            vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        assert_eq!(ticks(3.0, 9.0, 3), vec![4.0, 6.0, 8.0]);
        assert_eq!(ticks(5.0, 5.0, 4), vec![5.0]);
    }

    #[test]
    fn log_ticks_are_round_decades_or_linear_inside_one_decade() {
        assert_eq!(log_ticks(0.5, 30.0), vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        let wide = log_ticks(1e-3, 1e3);
        let want = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0];
        assert_eq!(wide.len(), want.len());
        assert!(
            wide.iter()
                .zip(want)
                .all(|(a, b)| (a / b - 1.0).abs() < 1e-12)
        );
        // 2.5 to 5.6 holds only the 5: linear ticks instead.
        assert_eq!(log_ticks(2.5, 5.6), vec![3.0, 4.0, 5.0]);
    }

    /// The colours of `--series` in the light theme of keel.css.
    #[test]
    fn the_page_and_the_figures_give_runs_the_same_colours() {
        let css = include_str!("../../../static/keel.css");
        let line = css
            .lines()
            .find(|l| l.trim_start().starts_with("--series:"))
            .expect("keel.css defines --series");
        let hex: Vec<String> = line
            .split(['#', ',', ';'])
            .skip(1)
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() == 6)
            .collect();
        let ours: Vec<String> = ink::SERIES
            .iter()
            .map(|c| format!("{:02x}{:02x}{:02x}", c.0, c.1, c.2))
            .collect();
        assert_eq!(hex, ours);
    }

    #[test]
    fn short_labels_stay_short_and_show_non_finite_values() {
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(short(3.25), "3.25");
        assert_eq!(short(2.63064), "2.631");
        assert_eq!(short(0.0123456), "0.01235");
        assert_eq!(short(0.00002), "2.0e-5");
        assert_eq!(short(f64::NAN), "NaN");
        assert_eq!(short(f64::NEG_INFINITY), "-∞");
    }

    #[test]
    fn an_image_name_splits_into_the_series_and_its_format() {
        assert_eq!(
            Format::split("hidden_var.png"),
            Some(("hidden_var", Format::Png))
        );
        assert_eq!(
            Format::split("loss/code.svg"),
            Some(("loss/code", Format::Svg))
        );
        assert_eq!(Format::split("hidden_var"), None);
    }
}
