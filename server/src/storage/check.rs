//! `keel check`: the summaries of a database verified against its stored steps, offline.
//!
//! Every bucket of every level of every (run, branch) is recomputed from that branch's own
//! steps, in step order, and compared with the stored one: count, first and last step, and
//! min, max and last bit for bit; the sum to within rounding (a sum depends on the order its
//! terms were added in, and steps may arrive in any order). A bucket that is stored but holds
//! no step is extra. With `repair`, every bucket that disagrees is rewritten from the steps
//! and every extra one deleted, in one transaction.
//!
//! Memory stays bounded by the open buckets (one per series and level) and the set of bucket
//! keys of one branch; steps are streamed, never loaded whole.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::codec;
use super::summary::{LEVELS, Summary};

/// What a check found (and, with repair, mended).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// (run, branch) pairs checked.
    pub branches: u64,
    pub steps: u64,
    /// Buckets recomputed from the steps.
    pub buckets: u64,
    /// Stored buckets that disagree with their steps.
    pub wrong: u64,
    /// Buckets with steps but no stored summary.
    pub missing: u64,
    /// Stored buckets without a step.
    pub extra: u64,
    /// Up to [`EXAMPLES`] of the disagreements, for people.
    pub examples: Vec<String>,
    /// Whether the disagreements were rewritten.
    pub repaired: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.wrong == 0 && self.missing == 0 && self.extra == 0
    }

    /// Keeps one more disagreement to show, while there are fewer than [`EXAMPLES`].
    fn example(&mut self, text: impl FnOnce() -> String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(text());
        }
    }
}

const EXAMPLES: usize = 10;

/// A bucket: (series, level, bucket index).
type Key = (u32, u64, u64);

/// Checks the database at `path` (which must exist), repairing it when `repair` is set. Only
/// a repair writes; a plain check opens the file read-only.
pub async fn check(path: &Path, repair: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(path.is_file(), "no database at {}", path.display());
    // A repair writes summaries: not while a server is writing them too.
    let _lock = repair.then(|| super::lock::acquire(path)).transpose()?;
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(false)
        .read_only(!repair)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .log_statements(tracing::log::LevelFilter::Trace);
    let open = || async {
        options
            .connect()
            .await
            .with_context(|| format!("opening {}", path.display()))
    };
    // One connection streams steps, one reads stored buckets, one writes repairs.
    let (mut steps, mut stored) = (open().await?, open().await?);
    let has_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('steps', 'summaries')",
    )
    .fetch_one(&mut stored)
    .await?;
    anyhow::ensure!(has_tables == 2, "{} is not a keel database", path.display());
    let branches: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT DISTINCT run_id, branch FROM steps
         UNION SELECT DISTINCT run_id, branch FROM summaries ORDER BY 1, 2",
    )
    .fetch_all(&mut stored)
    .await?;
    let mut repairs = match repair {
        true => Some(open().await?),
        false => None,
    };
    let mut tx = match repairs.as_mut() {
        Some(c) => Some(c.begin().await?),
        None => None,
    };
    let mut report = Report::default();
    for (run, branch) in branches {
        let mut walk = Walk::new(run, branch);
        {
            let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
                "SELECT step, data FROM steps WHERE run_id = $1 AND branch = $2 ORDER BY step",
            )
            .bind(run)
            .bind(branch)
            .fetch(&mut steps);
            while let Some((step, data)) = rows.try_next().await? {
                report.steps += 1;
                for done in walk.add(step as u64, &data) {
                    walk.judge(&mut stored, tx.as_deref_mut(), done, &mut report)
                        .await?;
                }
            }
        }
        for done in walk.finish() {
            walk.judge(&mut stored, tx.as_deref_mut(), done, &mut report)
                .await?;
        }
        walk.extras(&mut stored, tx.as_deref_mut(), &mut report)
            .await?;
        report.branches += 1;
    }
    if let Some(tx) = tx {
        tx.commit().await.context("committing the repairs")?;
        report.repaired = true;
    }
    Ok(report)
}

/// One branch's steps, in step order, becoming buckets.
struct Walk {
    run: i64,
    branch: i64,
    /// The open bucket of each (series, level), with the sum of |value| per element (the
    /// scale of the rounding a sum may carry).
    open: HashMap<(u32, u64), (u64, Summary, Vec<f64>)>,
    /// Every bucket this branch's steps make.
    seen: HashSet<Key>,
}

impl Walk {
    fn new(run: i64, branch: i64) -> Walk {
        Walk {
            run,
            branch,
            open: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds one step; returns the buckets it closed.
    fn add(&mut self, step: u64, data: &[u8]) -> Vec<(Key, Summary, Vec<f64>)> {
        let mut closed = Vec::new();
        for (series, raw) in codec::entries(data) {
            let values = codec::get_f64s(raw);
            for level in LEVELS {
                let bucket = step / level;
                let slot = self.open.entry((series, level));
                match slot {
                    std::collections::hash_map::Entry::Occupied(mut e) if e.get().0 == bucket => {
                        let (_, s, abs) = e.get_mut();
                        s.add(step, &values);
                        abs.iter_mut().zip(&values).for_each(|(a, v)| *a += v.abs());
                    }
                    slot => {
                        let abs: Vec<f64> = values.iter().map(|v| v.abs()).collect();
                        let fresh = (bucket, Summary::of(step, &values), abs);
                        let old = match slot {
                            std::collections::hash_map::Entry::Occupied(mut e) => {
                                Some(std::mem::replace(e.get_mut(), fresh))
                            }
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(fresh);
                                None
                            }
                        };
                        if let Some((b, s, abs)) = old {
                            closed.push(((series, level, b), s, abs));
                        }
                        self.seen.insert((series, level, bucket));
                    }
                }
            }
        }
        closed
    }

    /// The buckets still open at the end of the branch.
    fn finish(&mut self) -> Vec<(Key, Summary, Vec<f64>)> {
        self.open
            .drain()
            .map(|((series, level), (b, s, abs))| ((series, level, b), s, abs))
            .collect()
    }

    /// Compares one recomputed bucket with the stored one; rewrites it when repairing.
    async fn judge(
        &self,
        stored: &mut SqliteConnection,
        repair: Option<&mut SqliteConnection>,
        (key, want, abs): (Key, Summary, Vec<f64>),
        report: &mut Report,
    ) -> anyhow::Result<()> {
        report.buckets += 1;
        let (series, level, bucket) = key;
        let row: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM summaries
             WHERE run_id = $1 AND branch = $2 AND series_id = $3 AND level = $4 AND bucket = $5",
        )
        .bind(self.run)
        .bind(self.branch)
        .bind(series)
        .bind(level as i64)
        .bind(bucket as i64)
        .fetch_optional(&mut *stored)
        .await?;
        let verdict = match row.as_deref().map(Summary::decode) {
            None => Some("missing"),
            Some(Some(got)) if agrees(&got, &want, &abs) => None,
            Some(_) => Some("wrong"),
        };
        let Some(verdict) = verdict else {
            return Ok(());
        };
        match verdict {
            "missing" => report.missing += 1,
            _ => report.wrong += 1,
        }
        report.example(|| {
            format!(
                "run {} branch {}: series {series}, the {level}-step bucket from step {} is {verdict}",
                self.run,
                self.branch,
                bucket * level
            )
        });
        if let Some(conn) = repair {
            sqlx::query(
                "INSERT INTO summaries (run_id, branch, series_id, level, bucket, data)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (run_id, branch, series_id, level, bucket) DO UPDATE SET data = excluded.data",
            )
            .bind(self.run)
            .bind(self.branch)
            .bind(series)
            .bind(level as i64)
            .bind(bucket as i64)
            .bind(want.encode())
            .execute(conn)
            .await?;
        }
        Ok(())
    }

    /// Stored buckets that no step of the branch falls in; deleted when repairing.
    async fn extras(
        &self,
        stored: &mut SqliteConnection,
        mut repair: Option<&mut SqliteConnection>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let keys: Vec<(u32, i64, i64)> = sqlx::query_as(
            "SELECT series_id, level, bucket FROM summaries WHERE run_id = $1 AND branch = $2",
        )
        .bind(self.run)
        .bind(self.branch)
        .fetch_all(&mut *stored)
        .await?;
        for (series, level, bucket) in keys {
            if self.seen.contains(&(series, level as u64, bucket as u64)) {
                continue;
            }
            report.extra += 1;
            report.example(|| {
                format!(
                    "run {} branch {}: series {series}, the {level}-step bucket from step {} has no steps",
                    self.run,
                    self.branch,
                    bucket * level
                )
            });
            if let Some(conn) = repair.as_deref_mut() {
                sqlx::query(
                    "DELETE FROM summaries WHERE run_id = $1 AND branch = $2 AND series_id = $3
                     AND level = $4 AND bucket = $5",
                )
                .bind(self.run)
                .bind(self.branch)
                .bind(series)
                .bind(level)
                .bind(bucket)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// Whether a stored summary is the one its steps make: exact but for the sum's rounding,
/// which is bounded by a few ulps of the sum of magnitudes.
pub fn agrees(got: &Summary, want: &Summary, abs: &[f64]) -> bool {
    let bits = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let sums = got.sum.len() == want.sum.len()
        && got.sum.iter().zip(&want.sum).zip(abs).all(|((g, w), a)| {
            g.to_bits() == w.to_bits()
                || (g.is_nan() && w.is_nan())
                || (g - w).abs() <= 1e-12 * a.max(f64::MIN_POSITIVE) * want.count as f64
        });
    (got.count, got.first_step, got.last_step) == (want.count, want.first_step, want.last_step)
        && bits(&got.min, &want.min)
        && bits(&got.max, &want.max)
        && bits(&got.last, &want.last)
        && sums
}
