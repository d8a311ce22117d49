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

use super::summary::{LEVELS, Summary};
use super::{Location, codec, postgres, sqlite};

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
    pub(super) fn example(&mut self, text: impl FnOnce() -> String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(text());
        }
    }
}

const EXAMPLES: usize = 10;

/// A bucket: (series, level, bucket index).
pub(super) type Key = (u32, u64, u64);

/// Checks the database at `at` (a SQLite file must exist), repairing it when `repair` is
/// set. Only a repair writes; a plain check only reads.
pub async fn check(at: impl Into<Location>, repair: bool) -> anyhow::Result<Report> {
    match at.into() {
        Location::Sqlite(path) => sqlite::check(&path, repair).await,
        Location::Postgres(url) => postgres::check(&url, repair).await,
    }
}

/// One branch's steps, in step order, becoming buckets.
pub(super) struct Walk {
    pub(super) run: i64,
    pub(super) branch: i64,
    /// The open bucket of each (series, level), with the sum of |value| per element (the
    /// scale of the rounding a sum may carry).
    open: HashMap<(u32, u64), (u64, Summary, Vec<f64>)>,
    /// Every bucket this branch's steps make.
    pub(super) seen: HashSet<Key>,
}

impl Walk {
    pub(super) fn new(run: i64, branch: i64) -> Walk {
        Walk {
            run,
            branch,
            open: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds one step; returns the buckets it closed.
    pub(super) fn add(&mut self, step: u64, data: &[u8]) -> Vec<(Key, Summary, Vec<f64>)> {
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
    pub(super) fn finish(&mut self) -> Vec<(Key, Summary, Vec<f64>)> {
        self.open
            .drain()
            .map(|((series, level), (b, s, abs))| ((series, level, b), s, abs))
            .collect()
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
