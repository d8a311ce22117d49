//! Scalar series and layer matrices at the resolution asked for, exact at every zoom.
//!
//! A query over steps `[from, to]` in at most `n` buckets picks a bucket width that is a
//! multiple of a pyramid level and a grid aligned to it. Each bucket is then covered exactly:
//! by the coarsest stored summaries that fit inside the range, by finer ones at its edges,
//! and by raw steps for the last few — so min and max are the true min and max of the steps
//! in the bucket, and a one-step spike is never averaged away. A run's live history may run
//! through several branches (after a rewind); each branch contributes its own segment.

use futures_util::TryStreamExt;
use keel_protocol::{LayerMatrix, ScalarSeries};

use super::runs::{self, RunRow};
use super::summary::{LEVELS, Summary};
use super::{Conn, Db, POSTGRES, Pool, StoreError, StoreResult, codec};
use crate::storage::series::{Grid, Plan, Window, layer_columns, scalar_columns};

/// Plans a read of one series of `run` over `window`.
pub async fn plan(
    db: &Pool,
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

/// The buckets with data among grid columns `cols`, in step order. Reads of several
/// chunks agree with each other when they share one transaction's snapshot.
pub async fn read(
    conn: &mut Conn,
    plan: &Plan,
    cols: std::ops::Range<u64>,
) -> StoreResult<Vec<Summary>> {
    let Some(grid) = plan.grid else {
        return Ok(Vec::new());
    };
    let lo = plan.from.max(grid.origin + cols.start * grid.width);
    let hi = plan.to.min(grid.origin + cols.end * grid.width - 1);
    let mut reader = Reader {
        conn,
        plan,
        columns: Columns {
            grid,
            first: cols.start,
            slots: vec![None; (cols.end - cols.start) as usize],
        },
    };
    for &(b, s0, s1) in &plan.segments {
        let (s0, s1) = (s0.max(lo), s1.min(hi));
        if s0 <= s1 {
            reader.cover(b, s0, s1, grid.level).await?;
        }
    }
    Ok(reader.columns.slots.into_iter().flatten().collect())
}

/// Every bucket at once: for callers whose bucket counts are small (charts, pages).
pub async fn read_all(db: &Pool, plan: &Plan) -> StoreResult<Vec<Summary>> {
    let mut snapshot = Snapshot::begin(db).await?;
    snapshot.read_every(plan).await
}

/// Every bucket, chunk after chunk, on a connection (inside a transaction for one
/// snapshot).
pub async fn read_every(conn: &mut Conn, plan: &Plan) -> StoreResult<Vec<Summary>> {
    let mut out = Vec::new();
    for cols in plan.chunks() {
        out.extend(read(conn, plan, cols).await?);
    }
    Ok(out)
}

/// The chunk of grid columns being filled, from summaries and raw steps.
struct Reader<'a> {
    conn: &'a mut Conn,
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
        .bind(i64::from(branch))
        .bind(i64::from(self.plan.series_id))
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
        .bind(i64::from(branch))
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
async fn lineage(db: &Pool, run: &RunRow, branch: u32) -> StoreResult<Vec<(u32, u64, u64)>> {
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
    db: &Pool,
    run_id: i64,
    segments: &[(u32, u64, u64)],
) -> StoreResult<Option<(u64, u64)>> {
    let mut out: Option<(u64, u64)> = None;
    for &(branch, lo, hi) in segments {
        // The first and the last by the index, one row each: an aggregate (MIN, MAX) would be
        // planned as a scan of the whole range where PostgreSQL's statistics are not fresh.
        let hi = hi.min(i64::MAX as u64) as i64;
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT step FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4
                     ORDER BY step LIMIT 1),
                    (SELECT step FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4
                     ORDER BY step DESC LIMIT 1)",
        )
        .bind(run_id)
        .bind(i64::from(branch))
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

async fn find_series(db: &Pool, run: &RunRow, layer: bool, name: &str) -> StoreResult<u32> {
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

/// A scalar series read whole: for bucket counts a page or chart asks for.
pub async fn scalar_series(
    db: &Pool,
    run: &RunRow,
    key: &str,
    window: Window,
) -> StoreResult<ScalarSeries> {
    let plan = plan(db, run, false, key, window).await?;
    let buckets = read_all(db, &plan).await?;
    Ok(scalar_columns(&plan, key, &buckets))
}

/// A layer matrix read whole: for bucket counts a page or chart asks for.
pub async fn layer_matrix(
    db: &Pool,
    run: &RunRow,
    stat: &str,
    window: Window,
) -> StoreResult<LayerMatrix> {
    let plan = plan(db, run, true, stat, window).await?;
    let buckets = read_all(db, &plan).await?;
    Ok(layer_columns(&plan, stat, run.width(stat), &buckets))
}

/// One consistent view of the database for reads that span several queries: the chunks
/// of a large answer agree with each other while steps keep arriving.
pub struct Snapshot(sqlx::Transaction<'static, Db>);

impl Snapshot {
    pub async fn begin(db: &Pool) -> StoreResult<Snapshot> {
        // SQLite's read transaction is a snapshot already; under PostgreSQL's default (read
        // committed) each statement would see its own.
        let tx = if POSTGRES {
            db.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?
        } else {
            db.begin().await?
        };
        Ok(Snapshot(tx))
    }

    /// The buckets with data among `plan`'s grid columns `cols`, in step order.
    pub async fn read(
        &mut self,
        plan: &Plan,
        cols: std::ops::Range<u64>,
    ) -> StoreResult<Vec<Summary>> {
        read(&mut self.0, plan, cols).await
    }

    /// Every bucket of `plan`, chunk after chunk.
    pub async fn read_every(&mut self, plan: &Plan) -> StoreResult<Vec<Summary>> {
        read_every(&mut self.0, plan).await
    }
}
