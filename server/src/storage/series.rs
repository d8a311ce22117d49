//! Scalar series and layer matrices at the resolution asked for, exact at every zoom.
//!
//! A query over steps `[from, to]` in at most `n` buckets picks a bucket width that is a
//! multiple of a pyramid level and a grid aligned to it. Each bucket is then covered exactly:
//! by the coarsest stored summaries that fit inside the range, by finer ones at its edges,
//! and by raw steps for the last few — so min and max are the true min and max of the steps
//! in the bucket, and a one-step spike is never averaged away. A run's live history may run
//! through several branches (after a rewind); each branch contributes its own segment.

use keel_protocol::{LayerMatrix, Metric, ScalarSeries};
use sqlx::SqlitePool;

use super::runs::{self, RunRow};
use super::summary::{LEVELS, Summary};
use super::{StoreError, StoreResult, codec};

/// What part of a series to read, and at what resolution.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub buckets: u64,
    pub branch: Option<u32>,
}

/// The bucket grid of one query: bucket k covers `[origin + k·width, origin + (k+1)·width)`
/// clipped to `[from, to]`. `level` is the coarsest pyramid level that tiles it (None: raw).
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
        let w = n.div_ceil(buckets);
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

    fn column(&self, step: u64) -> usize {
        ((step - self.origin) / self.width) as usize
    }
}

/// One series of one run, read into grid buckets.
struct Reader<'a> {
    db: &'a SqlitePool,
    run_id: i64,
    series_id: u32,
    grid: Grid,
    columns: Vec<Option<Summary>>,
}

impl Reader<'_> {
    fn put(&mut self, step: u64, summary: Summary) {
        let col = self.grid.column(step);
        match &mut self.columns[col] {
            Some(s) => s.merge(&summary),
            slot => *slot = Some(summary),
        }
    }

    /// Covers `[lo, hi]` of `branch`: whole buckets of `level` inside it, finer at the edges.
    async fn cover(
        &mut self,
        branch: u32,
        lo: u64,
        hi: u64,
        level: Option<usize>,
    ) -> StoreResult<()> {
        let mut work = vec![(lo, hi, level)];
        while let Some((lo, hi, level)) = work.pop() {
            let Some(li) = level else {
                self.raw(branch, lo, hi).await?;
                continue;
            };
            let finer = li.checked_sub(1);
            let l = LEVELS[li];
            let (k0, k1) = (lo.div_ceil(l), (hi + 1) / l);
            if k0 >= k1 {
                work.push((lo, hi, finer));
                continue;
            }
            self.summaries(branch, li, k0, k1 - 1).await?;
            if lo < k0 * l {
                work.push((lo, k0 * l - 1, finer));
            }
            if k1 * l <= hi {
                work.push((k1 * l, hi, finer));
            }
        }
        Ok(())
    }

    async fn summaries(&mut self, branch: u32, li: usize, k0: u64, k1: u64) -> StoreResult<()> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT bucket, data FROM summaries WHERE run_id = ? AND branch = ? AND series_id = ?
             AND level = ? AND bucket BETWEEN ? AND ?",
        )
        .bind(self.run_id)
        .bind(branch)
        .bind(self.series_id)
        .bind(LEVELS[li] as i64)
        .bind(k0 as i64)
        .bind(k1 as i64)
        .fetch_all(self.db)
        .await?;
        for (bucket, data) in rows {
            let summary = Summary::decode(&data)
                .ok_or_else(|| anyhow::anyhow!("a damaged summary row in run {}", self.run_id))?;
            self.put(bucket as u64 * LEVELS[li], summary);
        }
        Ok(())
    }

    async fn raw(&mut self, branch: u32, lo: u64, hi: u64) -> StoreResult<()> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT step, data FROM steps WHERE run_id = ? AND branch = ? AND step BETWEEN ? AND ?",
        )
        .bind(self.run_id)
        .bind(branch)
        .bind(lo as i64)
        .bind(hi as i64)
        .fetch_all(self.db)
        .await?;
        for (step, data) in rows {
            if let Some(values) = codec::find_entry(&data, self.series_id) {
                self.put(step as u64, Summary::of(step as u64, &values));
            }
        }
        Ok(())
    }
}

/// The stretches of branches that make up the history of `branch`, newest first:
/// (branch, first step, last step).
async fn lineage(db: &SqlitePool, run: &RunRow, branch: u32) -> StoreResult<Vec<(u32, u64, u64)>> {
    let all = runs::branches(db, run.id).await?;
    let mut out = Vec::new();
    let mut current = Some(branch);
    let mut upper = u64::MAX;
    while let Some(b) = current {
        let row = all
            .iter()
            .find(|r| r.branch == b)
            .ok_or_else(|| StoreError::NotFound(format!("branch {b} of run {}", run.id)))?;
        let lo = row.fork_step.map_or(0, |f| f + 1);
        if lo <= upper {
            out.push((b, lo, upper));
        }
        upper = row.fork_step.unwrap_or(0).min(upper);
        current = row.parent.filter(|_| row.fork_step.is_some());
    }
    Ok(out)
}

/// The first and last stored steps of a branch's history.
async fn bounds(
    db: &SqlitePool,
    run_id: i64,
    segments: &[(u32, u64, u64)],
) -> StoreResult<Option<(u64, u64)>> {
    let mut out: Option<(u64, u64)> = None;
    for &(branch, lo, hi) in segments {
        // Two sub-queries: SQLite answers a lone MIN or MAX from the index in one seek, but
        // MIN and MAX in one SELECT scan the whole range.
        let hi = hi.min(i64::MAX as u64) as i64;
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT MIN(step) FROM steps WHERE run_id = ?1 AND branch = ?2 AND step BETWEEN ?3 AND ?4),
                    (SELECT MAX(step) FROM steps WHERE run_id = ?1 AND branch = ?2 AND step BETWEEN ?3 AND ?4)",
        )
        .bind(run_id)
        .bind(branch)
        .bind(lo as i64)
        .bind(hi)
        .fetch_one(db)
        .await?;
        if let (Some(min), Some(max)) = (min, max) {
            let (min, max) = (min as u64, max as u64);
            out = Some(out.map_or((min, max), |(a, b)| (a.min(min), b.max(max))));
        }
    }
    Ok(out)
}

/// The buckets of one series with data in them, in step order, and the branch read.
async fn read(
    db: &SqlitePool,
    run: &RunRow,
    series_id: u32,
    window: Window,
) -> StoreResult<(u32, Vec<Summary>)> {
    let branch = window.branch.unwrap_or(run.branch);
    let segments = lineage(db, run, branch).await?;
    // An open end of the window is the first or last stored step, so that `points` equal
    // to the number of steps gives one step per bucket whatever step the run started at.
    let (from, to) = match (window.from, window.to) {
        (Some(from), Some(to)) => (from, to),
        (from, to) => match bounds(db, run.id, &segments).await? {
            Some((first, last)) => (from.unwrap_or(first), to.unwrap_or(last)),
            None => return Ok((branch, Vec::new())),
        },
    };
    if to < from {
        return Ok((branch, Vec::new()));
    }
    let grid = Grid::new(from, to, window.buckets);
    let mut reader = Reader {
        db,
        run_id: run.id,
        series_id,
        grid,
        columns: vec![None; grid.count as usize],
    };
    for (b, lo, hi) in segments {
        let (lo, hi) = (lo.max(from), hi.min(to));
        if lo <= hi {
            reader.cover(b, lo, hi, grid.level).await?;
        }
    }
    Ok((branch, reader.columns.into_iter().flatten().collect()))
}

async fn find_series(db: &SqlitePool, run: &RunRow, layer: bool, name: &str) -> StoreResult<u32> {
    let series = runs::series_of(db, run.id).await?;
    series
        .iter()
        .find(|s| s.layer == layer && s.name == name)
        .map(|s| s.id)
        .ok_or_else(|| {
            let what = if layer { "layer statistic" } else { "scalar" };
            StoreError::NotFound(format!("{what} `{name}` in run {}", run.id))
        })
}

fn metrics(values: impl Iterator<Item = f64>) -> Vec<Metric> {
    values.map(Metric::new).collect()
}

pub async fn scalar_series(
    db: &SqlitePool,
    run: &RunRow,
    key: &str,
    window: Window,
) -> StoreResult<ScalarSeries> {
    let id = find_series(db, run, false, key).await?;
    let (branch, buckets) = read(db, run, id, window).await?;
    let mut out = ScalarSeries {
        key: key.to_owned(),
        branch,
        ..Default::default()
    };
    for b in buckets {
        out.step.push(b.first_step);
        out.min.push(Metric::new(b.min[0]));
        out.max.push(Metric::new(b.max[0]));
        out.mean.push(Metric::new(b.sum[0] / b.count as f64));
        out.last.push(Metric::new(b.last[0]));
    }
    Ok(out)
}

pub async fn layer_matrix(
    db: &SqlitePool,
    run: &RunRow,
    stat: &str,
    window: Window,
) -> StoreResult<LayerMatrix> {
    let id = find_series(db, run, true, stat).await?;
    let (branch, buckets) = read(db, run, id, window).await?;
    let mut out = LayerMatrix {
        stat: stat.to_owned(),
        branch,
        layers: run.layers,
        ..Default::default()
    };
    for b in buckets {
        out.step.push(b.first_step);
        out.min.push(metrics(b.min.iter().copied()));
        out.max.push(metrics(b.max.iter().copied()));
        out.mean.push(metrics(b.mean()));
    }
    Ok(out)
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
