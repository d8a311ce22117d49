//! Where everything of a comparison figure goes, decided before any data is read: the widths
//! of the plots set how many buckets each query asks for, one per pixel column.
//!
//! From the top: the title, a legend naming every run, the overlaid loss curves, the depth
//! profile, and the runs' heatmaps in a grid with one colour bar at its right. The plots have
//! natural heights; a figure asked for at another height stretches or shrinks them (down to
//! half), never the text around them.

/// Narrowest, widest and default figure width, in pixels.
pub const WIDTH: (u32, u32, u32) = (600, 3000, 1200);
/// Lowest and highest figure height a caller may ask for.
pub const HEIGHT: (u32, u32) = (300, 4000);

const PAD: i32 = 16;
/// The title line.
const TITLE: i32 = 36;
/// One row of the legend.
const KEY_ROW: i32 = 20;
/// A panel's heading, above its plot.
const HEAD: i32 = 26;
/// Tick labels and axis name under a plot.
const FOOT: i32 = 42;
const GAP: i32 = 14;
/// Room for value labels left of a plot.
const LEFT: i32 = 72;
/// A heatmap's caption (the run), and its step labels under it.
const CELL_HEAD: i32 = 20;
const CELL_FOOT: i32 = 22;
/// Room for layer labels left of a heatmap.
const CELL_LEFT: i32 = 30;
/// The narrowest heatmap; the grid has as many columns as fit.
const MIN_CELL: i32 = 260;
/// The colour bar and its labels, right of the heatmaps.
const BAR: i32 = 100;
/// Natural plot heights: loss, depth profile, one row of heatmaps.
const NATURAL: (f64, f64, f64) = (300.0, 200.0, 120.0);
/// How far a given height may shrink the plots.
const SHRINK: f64 = 0.5;
/// Legend labels are cut to this many characters.
pub const LABEL_CHARS: usize = 48;

/// A plot rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub left: i32,
    pub top: i32,
    pub right: i32,
    pub bottom: i32,
}

impl Rect {
    /// Its width in pixels: the buckets a query for it asks for.
    pub fn columns(&self) -> u64 {
        (self.right - self.left).max(1) as u64
    }

    /// Where the panel heading above it starts.
    pub fn heading(&self) -> (i32, i32) {
        (PAD, self.top - HEAD + 4)
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub size: (u32, u32),
    /// The top left corner of each run's legend entry.
    pub keys: Vec<(i32, i32)>,
    pub loss: Rect,
    /// The depth profile and heatmaps: `None` when no run has layer statistics.
    pub layers: Option<LayerPanels>,
}

#[derive(Clone, Debug)]
pub struct LayerPanels {
    pub depth: Rect,
    /// One heatmap plot per run, in run order.
    pub cells: Vec<Rect>,
    /// The colour bar: its x, and the top and bottom of it with its swatches.
    pub bar: (i32, i32, i32),
    /// Where the heatmap panel's heading starts.
    pub heading: (i32, i32),
}

/// About how wide `s` is in the 13 px label font (DejaVu Sans averages 0.55 em a character).
fn text_width(s: &str) -> i32 {
    (s.chars().count() as f64 * 7.4).ceil() as i32
}

/// The legend entries flowed into rows: each a line sample, the label and a gap.
fn flow_keys(labels: &[String], width: i32) -> (Vec<(i32, i32)>, i32) {
    let (mut x, mut y) = (PAD, TITLE);
    let mut keys = Vec::with_capacity(labels.len());
    for label in labels {
        let w = 30 + text_width(label) + 22;
        if x > PAD && x + w > width - PAD {
            (x, y) = (PAD, y + KEY_ROW);
        }
        keys.push((x, y));
        x += w;
    }
    (keys, y + KEY_ROW)
}

impl Layout {
    /// The layout of a figure `width` wide for runs with these legend labels, `height` high
    /// when given (else as high as its content needs). `Err` says why a height cannot hold it.
    pub fn new(
        width: u32,
        height: Option<u32>,
        labels: &[String],
        with_layers: bool,
    ) -> Result<Layout, String> {
        let w = width as i32;
        let (keys, legend_end) = flow_keys(labels, w);
        let n = labels.len().max(1) as i32;
        let cols = ((w - 2 * PAD - BAR) / MIN_CELL).clamp(1, n);
        let rows = (n + cols - 1) / cols;
        let (loss_h, depth_h, heat_h) = NATURAL;
        let mut fixed = legend_end + GAP + HEAD + FOOT + PAD;
        let mut flex = loss_h;
        if with_layers {
            fixed += 2 * (GAP + HEAD) + FOOT + rows * (CELL_HEAD + CELL_FOOT);
            flex += depth_h + rows as f64 * heat_h;
        }
        let k = match height {
            None => 1.0,
            Some(h) => {
                let k = (h as i32 - fixed) as f64 / flex;
                if k < SHRINK {
                    let least = fixed + (flex * SHRINK).ceil() as i32;
                    return Err(format!(
                        "a figure {h} px high cannot hold this comparison: it needs at least {least} px"
                    ));
                }
                k
            }
        };
        let px = |natural: f64| (natural * k).round() as i32;
        let mut y = legend_end + GAP + HEAD;
        let loss = Rect {
            left: PAD + LEFT,
            top: y,
            right: w - PAD - 12,
            bottom: y + px(loss_h),
        };
        y = loss.bottom + FOOT;
        let layers = with_layers.then(|| {
            let depth = Rect {
                top: y + GAP + HEAD,
                bottom: y + GAP + HEAD + px(depth_h),
                ..loss
            };
            let top = depth.bottom + FOOT + GAP + HEAD;
            let cell_w = (w - 2 * PAD - BAR) / cols;
            let row_h = CELL_HEAD + px(heat_h) + CELL_FOOT;
            let cells = (0..labels.len() as i32)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    let (x, y) = (PAD + c * cell_w, top + r * row_h + CELL_HEAD);
                    Rect {
                        left: x + CELL_LEFT,
                        top: y,
                        right: x + cell_w - 14,
                        bottom: y + px(heat_h),
                    }
                })
                .collect();
            y = top + rows * row_h;
            LayerPanels {
                depth,
                cells,
                bar: (w - PAD - BAR + 16, top + CELL_HEAD, y),
                heading: (PAD, top - HEAD + 4),
            }
        });
        let height = height.unwrap_or((y + PAD) as u32);
        Ok(Layout {
            size: (width, height),
            keys,
            loss,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("run-{i} · variant")).collect()
    }

    #[test]
    fn the_plots_fit_inside_the_figure_and_heatmaps_do_not_overlap() {
        for n in [1, 3, 20] {
            let l = Layout::new(1200, None, &labels(n), true).unwrap();
            let (w, h) = (l.size.0 as i32, l.size.1 as i32);
            let p = l.layers.as_ref().unwrap();
            assert!(l.loss.right < w && l.loss.bottom < p.depth.top);
            assert_eq!(p.cells.len(), n);
            for pair in p.cells.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                assert!(a.right < b.left || a.bottom < b.top, "{a:?} {b:?}");
            }
            let last = p.cells.last().unwrap();
            assert!(last.bottom + CELL_FOOT <= h && p.bar.0 + 60 < w);
            assert!(p.bar.2 - p.bar.1 >= 100, "room for the colour bar");
        }
    }

    #[test]
    fn a_given_height_stretches_the_plots_and_too_small_a_one_is_refused() {
        let natural = Layout::new(1200, None, &labels(3), true).unwrap();
        let tall = Layout::new(1200, Some(natural.size.1 + 400), &labels(3), true).unwrap();
        assert_eq!(tall.size.1, natural.size.1 + 400);
        assert!(tall.loss.bottom - tall.loss.top > natural.loss.bottom - natural.loss.top);
        let err = Layout::new(1200, Some(300), &labels(20), true).unwrap_err();
        assert!(err.contains("needs at least"), "{err}");
        // Without layer statistics only the loss panel is left.
        let flat = Layout::new(800, Some(320), &labels(2), false).unwrap();
        assert!(flat.layers.is_none() && flat.loss.bottom < 320);
    }

    #[test]
    fn legend_entries_wrap_inside_the_width() {
        let l = Layout::new(600, None, &labels(12), false).unwrap();
        assert!(l.keys.iter().all(|(x, _)| *x < 600 - PAD));
        assert!(l.keys.last().unwrap().1 > TITLE, "more than one row");
    }
}
