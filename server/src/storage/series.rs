//! Scalar series and layer matrices at the resolution asked for, exact at every zoom.
//!
//! A query over steps `[from, to]` in at most `n` buckets picks a bucket width that is a
//! multiple of a pyramid level and a grid aligned to it. Each bucket is then covered exactly:
//! by the coarsest stored summaries that fit inside the range, by finer ones at its edges,
//! and by raw steps for the last few — so min and max are the true min and max of the steps
//! in the bucket, and a one-step spike is never averaged away. A run's live history may run
//! through several branches (after a rewind); each branch contributes its own segment.

use futures_util::TryStreamExt;
use keel_protocol::{LayerMatrix, Metric, ScalarSeries};
use sqlx::{SqliteConnection, SqlitePool};

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

    fn column(&self, step: u64) -> usize {
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
/// Reading it chunk by chunk ([`Plan::chunks`], [`Plan::read`]) holds one chunk at a time,
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
    from: u64,
    to: u64,
    /// None when there is nothing to read.
    grid: Option<Grid>,
    segments: Vec<(u32, u64, u64)>,
}

impl Plan {
    pub async fn new(
        db: &SqlitePool,
        run: &RunRow,
        layer: bool,
        name: &str,
        window: Window,
    ) -> StoreResult<Plan> {
        let series_id = find_series(db, run, layer, name).await?;
        let branch = window.branch.unwrap_or(run.branch);
        let segments = lineage(db, run, branch).await?;
        let mut plan = Plan {
            run_id: run.id,
            series_id,
            branch,
            width: if layer {
                run.width(name).max(1) as u64
            } else {
                1
            },
            layer,
            from: 0,
            to: 0,
            grid: None,
            segments,
        };
        // An open end of the window is the first or last stored step, so that `points` equal
        // to the number of steps gives one step per bucket whatever step the run started at.
        let (from, to) = match (window.from, window.to) {
            (Some(from), Some(to)) => (from, to),
            (from, to) => match bounds(db, run.id, &plan.segments).await? {
                Some((first, last)) => (from.unwrap_or(first), to.unwrap_or(last)),
                None => return Ok(plan),
            },
        };
        if from <= to {
            (plan.from, plan.to) = (from, to);
            plan.grid = Some(Grid::new(from, to, window.buckets));
        }
        Ok(plan)
    }

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

    /// The buckets with data among grid columns `cols`, in step order. Reads of several
    /// chunks agree with each other when they share one transaction's snapshot.
    pub async fn read(
        &self,
        conn: &mut SqliteConnection,
        cols: std::ops::Range<u64>,
    ) -> StoreResult<Vec<Summary>> {
        let Some(grid) = self.grid else {
            return Ok(Vec::new());
        };
        let lo = self.from.max(grid.origin + cols.start * grid.width);
        let hi = self.to.min(grid.origin + cols.end * grid.width - 1);
        let mut reader = Reader {
            conn,
            plan: self,
            columns: Columns {
                grid,
                first: cols.start,
                slots: vec![None; (cols.end - cols.start) as usize],
            },
        };
        for &(b, s0, s1) in &self.segments {
            let (s0, s1) = (s0.max(lo), s1.min(hi));
            if s0 <= s1 {
                reader.cover(b, s0, s1, grid.level).await?;
            }
        }
        Ok(reader.columns.slots.into_iter().flatten().collect())
    }

    /// Every bucket at once: for callers whose bucket counts are small (charts, pages).
    pub async fn read_all(&self, db: &SqlitePool) -> StoreResult<Vec<Summary>> {
        let mut tx = db.begin().await?;
        self.read_every(&mut tx).await
    }

    /// Every bucket, chunk after chunk, on a connection (inside a transaction for one
    /// snapshot).
    pub async fn read_every(&self, conn: &mut SqliteConnection) -> StoreResult<Vec<Summary>> {
        let mut out = Vec::new();
        for cols in self.chunks() {
            out.extend(self.read(conn, cols).await?);
        }
        Ok(out)
    }
}

/// The chunk of grid columns being filled, from summaries and raw steps.
struct Reader<'a> {
    conn: &'a mut SqliteConnection,
    plan: &'a Plan,
    columns: Columns,
}

struct Columns {
    grid: Grid,
    /// The grid column of `slots[0]`.
    first: u64,
    slots: Vec<Option<Summary>>,
}

impl Columns {
    fn put(&mut self, step: u64, summary: Summary) {
        let col = self.grid.column(step) - self.first as usize;
        match &mut self.slots[col] {
            Some(s) => s.merge(&summary),
            slot => *slot = Some(summary),
        }
    }
}

impl Reader<'_> {
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

    /// Rows are merged one at a time as SQLite yields them, never collected.
    async fn summaries(&mut self, branch: u32, li: usize, k0: u64, k1: u64) -> StoreResult<()> {
        let run_id = self.plan.run_id;
        let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT bucket, data FROM summaries WHERE run_id = $1 AND branch = $2 AND series_id = $3
             AND level = $4 AND bucket BETWEEN $5 AND $6",
        )
        .bind(run_id)
        .bind(branch)
        .bind(self.plan.series_id)
        .bind(LEVELS[li] as i64)
        .bind(k0 as i64)
        .bind(k1 as i64)
        .fetch(&mut *self.conn);
        while let Some((bucket, data)) = rows.try_next().await? {
            let summary = Summary::decode(&data)
                .ok_or_else(|| anyhow::anyhow!("a damaged summary row in run {run_id}"))?;
            self.columns.put(bucket as u64 * LEVELS[li], summary);
        }
        Ok(())
    }

    async fn raw(&mut self, branch: u32, lo: u64, hi: u64) -> StoreResult<()> {
        let series_id = self.plan.series_id;
        let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT step, data FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4",
        )
        .bind(self.plan.run_id)
        .bind(branch)
        .bind(lo as i64)
        .bind(hi as i64)
        .fetch(&mut *self.conn);
        while let Some((step, data)) = rows.try_next().await? {
            if let Some(values) = codec::find_entry(&data, series_id) {
                self.columns
                    .put(step as u64, Summary::of(step as u64, &values));
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
            "SELECT (SELECT MIN(step) FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4),
                    (SELECT MAX(step) FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4)",
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

/// A scalar series read whole: for bucket counts a page or chart asks for.
pub async fn scalar_series(
    db: &SqlitePool,
    run: &RunRow,
    key: &str,
    window: Window,
) -> StoreResult<ScalarSeries> {
    let plan = Plan::new(db, run, false, key, window).await?;
    let buckets = plan.read_all(db).await?;
    Ok(scalar_columns(&plan, key, &buckets))
}

/// A layer matrix read whole: for bucket counts a page or chart asks for.
pub async fn layer_matrix(
    db: &SqlitePool,
    run: &RunRow,
    stat: &str,
    window: Window,
) -> StoreResult<LayerMatrix> {
    let plan = Plan::new(db, run, true, stat, window).await?;
    let buckets = plan.read_all(db).await?;
    Ok(layer_columns(&plan, stat, run.width(stat), &buckets))
}

/// One consistent view of the database for reads that span several queries: the chunks
/// of a large answer agree with each other while steps keep arriving.
pub struct Snapshot(sqlx::Transaction<'static, sqlx::Sqlite>);

impl Snapshot {
    pub(super) async fn begin(db: &SqlitePool) -> StoreResult<Snapshot> {
        Ok(Snapshot(db.begin().await?))
    }

    /// The buckets with data among `plan`'s grid columns `cols`, in step order.
    pub async fn read(
        &mut self,
        plan: &Plan,
        cols: std::ops::Range<u64>,
    ) -> StoreResult<Vec<Summary>> {
        plan.read(&mut self.0, cols).await
    }

    /// Every bucket of `plan`, chunk after chunk.
    pub async fn read_every(&mut self, plan: &Plan) -> StoreResult<Vec<Summary>> {
        plan.read_every(&mut self.0).await
    }
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
