//! Scalar series and layer matrices at the resolution asked for, exact at every zoom.
//!
//! A query over steps `[from, to]` in at most `n` buckets picks a bucket width that is a
//! multiple of a pyramid level and a grid aligned to it. Each bucket is then covered exactly:
//! by the coarsest stored summaries that fit inside the range, by finer ones at its edges,
//! and by raw steps for the last few — so min and max are the true min and max of the steps
//! in the bucket, and a one-step spike is never averaged away. A run's live history may run
//! through several branches (after a rewind); each branch contributes its own segment.

use keel_protocol::{LayerMatrix, Metric, ScalarSeries};

use super::summary::{LEVELS, Summary};

/// What part of a series to read, and at what resolution.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub buckets: u64,
    pub branch: Option<u32>,
}

/// The bucket grid of one query: bucket k covers `[origin + k·width, origin + (k+1)·width)`
/// clipped to `[from, to]`. `level` is the coarsest pyramid level that tiles it (None: raw,
/// only for windows of at most [`RAW_SPAN`] steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub origin: u64,
    pub width: u64,
    pub level: Option<usize>,
    pub count: u64,
}

impl Grid {
    pub fn new(from: u64, to: u64, buckets: u64) -> Grid {
        let buckets = buckets.max(1);
        let n = to - from + 1;
        let mut w = n.div_ceil(buckets);
        if w < LEVELS[0] && n > RAW_SPAN {
            w = LEVELS[0];
        }
        if w < LEVELS[0] {
            let count = n.div_ceil(w);
            return Grid {
                origin: from,
                width: w,
                level: None,
                count,
            };
        }
        let base = LEVELS
            .iter()
            .rposition(|&l| l <= w)
            .expect("w ≥ the finest level");
        let mut width = w.div_ceil(LEVELS[base]) * LEVELS[base];
        loop {
            let level = LEVELS
                .iter()
                .rposition(|&l| width.is_multiple_of(l))
                .expect("base divides");
            let origin = from - from % LEVELS[level];
            let count = (to - origin) / width + 1;
            if count <= buckets {
                return Grid {
                    origin,
                    width,
                    level: Some(level),
                    count,
                };
            }
            width += LEVELS[base];
        }
    }

    pub(super) fn column(&self, step: u64) -> usize {
        ((step - self.origin) / self.width) as usize
    }
}

/// The widest window read from raw steps. A raw step row holds every series of its step, so
/// reading raw costs the whole run's width per step: past this many steps a query is answered
/// in buckets of at least the finest summary level, whatever `points`/`columns` asked for.
pub const RAW_SPAN: u64 = 16_384;

/// Values of one field held per chunk of columns: a read of any size holds about this many
/// summaries' worth of values at a time.
const CHUNK_VALUES: u64 = 1 << 16;

/// One series of one run planned for reading: its history's segments and the bucket grid.
/// Reading it chunk by chunk ([`Plan::chunks`], a backend's `series::read`) holds one chunk at a time,
/// so an answer of 100,000 buckets of 1,000 layers costs no more memory than one of 100.
#[derive(Clone, Debug)]
pub struct Plan {
    pub run_id: i64,
    pub series_id: u32,
    /// The branch whose history is read.
    pub branch: u32,
    /// Values per step: 1 for a scalar, the layer count for a layer statistic.
    pub width: u64,
    pub layer: bool,
    pub(super) from: u64,
    pub(super) to: u64,
    /// None when there is nothing to read.
    pub(super) grid: Option<Grid>,
    /// The history read, newest first: (branch, first step, last step).
    pub(super) segments: Vec<(u32, u64, u64)>,
}

impl Plan {
    /// The column ranges to read in turn, each small enough to hold at once.
    pub fn chunks(&self) -> impl Iterator<Item = std::ops::Range<u64>> + use<> {
        let count = self.grid.map_or(0, |g| g.count);
        let size = (CHUNK_VALUES / self.width).max(1);
        (0..count.div_ceil(size)).map(move |i| i * size..((i + 1) * size).min(count))
    }

    /// Numbers in the whole answer, at most: per bucket its step and min, max, mean and last
    /// (a scalar) or min, max and mean per layer (a layer statistic).
    pub fn answer_values(&self) -> u64 {
        let per_bucket = if self.layer { 1 + 3 * self.width } else { 5 };
        self.grid.map_or(0, |g| g.count) * per_bucket
    }
}

fn metrics(values: impl Iterator<Item = f64>) -> Vec<Metric> {
    values.map(Metric::new).collect()
}

/// Buckets as the columns of a scalar series.
pub fn scalar_columns(plan: &Plan, key: &str, buckets: &[Summary]) -> ScalarSeries {
    let mut out = ScalarSeries {
        key: key.to_owned(),
        branch: plan.branch,
        ..Default::default()
    };
    for b in buckets {
        out.step.push(b.first_step);
        out.min.push(Metric::new(b.min[0]));
        out.max.push(Metric::new(b.max[0]));
        out.mean.push(Metric::new(b.sum[0] / b.count as f64));
        out.last.push(Metric::new(b.last[0]));
    }
    out
}

/// Buckets as the columns of a layer matrix.
pub fn layer_columns(plan: &Plan, stat: &str, layers: u32, buckets: &[Summary]) -> LayerMatrix {
    let mut out = LayerMatrix {
        stat: stat.to_owned(),
        branch: plan.branch,
        layers,
        ..Default::default()
    };
    for b in buckets {
        out.step.push(b.first_step);
        out.min.push(metrics(b.min.iter().copied()));
        out.max.push(metrics(b.max.iter().copied()));
        out.mean.push(metrics(b.mean()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ranges_are_read_raw_one_step_per_bucket() {
        let g = Grid::new(0, 99, 1000);
        assert_eq!(
            g,
            Grid {
                origin: 0,
                width: 1,
                level: None,
                count: 100
            }
        );
    }

    #[test]
    fn a_window_wider_than_the_raw_span_is_never_read_raw() {
        let g = Grid::new(0, 999_999, 100_000);
        assert_eq!((g.width, g.level, g.count), (16, Some(0), 62_500));
        let g = Grid::new(5, 5 + RAW_SPAN - 1, 100_000);
        assert_eq!((g.width, g.level), (1, None));
        let g = Grid::new(5, 5 + RAW_SPAN, 100_000);
        assert_eq!(g.level, Some(0));
    }

    #[test]
    fn a_million_steps_in_a_thousand_columns_use_the_level_of_1024() {
        let g = Grid::new(0, 999_999, 1000);
        assert_eq!(g.width, 1024);
        assert_eq!(g.level, Some(3));
        assert!(g.count <= 1000);
    }

    #[test]
    fn grids_never_exceed_the_bucket_count_and_cover_the_range() {
        for (from, to, n) in [
            (5, 1_000_003, 2000),
            (17, 18, 1),
            (1000, 70_000, 7),
            (0, 15, 1),
        ] {
            let g = Grid::new(from, to, n);
            assert!(g.count <= n, "{from}..{to} in {n}: {g:?}");
            assert!(g.origin <= from);
            assert!(g.origin + g.count * g.width > to);
            if let Some(l) = g.level {
                assert_eq!(g.width % LEVELS[l], 0);
                assert_eq!(g.origin % LEVELS[l], 0);
            }
        }
    }
}
