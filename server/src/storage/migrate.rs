//! `keel migrate`: a whole database copied to another, SQLite to PostgreSQL or back (or to
//! another file), with progress, resumable, and verified.
//!
//! Every table is copied in a fixed order (a run before what belongs to it), each in key
//! order, a chunk of rows per transaction of the target. An interrupted copy is resumed by
//! running it again: each table goes on after the last key the target holds. The source is
//! read in one snapshot (the copy is of one moment, even of a database being written) and
//! the end is verified by reading both sides again: every table's row count, and a SHA-256
//! per run over all of its rows (the run's own, its branches, series, steps, summaries,
//! events, commands and incidents) and one over the rest (launches, people, sessions), with
//! values compared as stored — an f64 by its bits, so NaN and ±Inf count.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{Location, Pool, StoreResult, on_backend, postgres, sqlite};

/// The tables keel keeps, in the order they are copied, each with its key.
const TABLES: &[(&str, &[&str])] = &[
    ("runs", &["id"]),
    ("branches", &["run_id", "branch"]),
    ("series", &["run_id", "id"]),
    ("steps", &["run_id", "branch", "step"]),
    (
        "summaries",
        &["run_id", "branch", "series_id", "level", "bucket"],
    ),
    ("events", &["id"]),
    ("commands", &["id"]),
    ("incidents", &["id"]),
    ("launches", &["id"]),
    ("users", &["name"]),
    ("sessions", &["id_hash"]),
];

/// Values bound per chunk at most (SQLite takes 32,766 per statement, PostgreSQL 65,535).
const CHUNK_VALUES: usize = 20_000;
/// Rows per chunk at most.
const CHUNK_ROWS: usize = 1_000;

/// What a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
    Bool,
}

impl Kind {
    /// From a declared type: SQLite's (`INTEGER`, `REAL`…) or PostgreSQL's `data_type`.
    pub fn of(declared: &str) -> Option<Kind> {
        let d = declared.to_ascii_lowercase();
        Some(if d.contains("bool") {
            Kind::Bool
        } else if d.contains("int") {
            Kind::Int
        } else if d.contains("real") || d.contains("double") || d.contains("floa") {
            Kind::Real
        } else if d.contains("text") || d.contains("char") {
            Kind::Text
        } else if d.contains("blob") || d.contains("bytea") {
            Kind::Blob
        } else {
            return None;
        })
    }

    /// `cell` as a value of this kind: SQLite keeps flags as integers where PostgreSQL has
    /// booleans. `None` when it does not fit.
    pub fn convert(self, cell: Cell) -> Option<Cell> {
        Some(match (self, cell) {
            (_, Cell::Null) => Cell::Null,
            (Kind::Int, Cell::Int(v)) => Cell::Int(v),
            (Kind::Int, Cell::Bool(b)) => Cell::Int(i64::from(b)),
            (Kind::Bool, Cell::Bool(b)) => Cell::Bool(b),
            (Kind::Bool, Cell::Int(v)) => Cell::Bool(v != 0),
            (Kind::Real, Cell::Real(v)) => Cell::Real(v),
            (Kind::Real, Cell::Int(v)) => Cell::Real(v as f64),
            (Kind::Text, Cell::Text(v)) => Cell::Text(v),
            (Kind::Blob, Cell::Blob(v)) => Cell::Blob(v),
            _ => return None,
        })
    }
}

/// One value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

impl Cell {
    /// Feeds the value to a checksum, the same whichever backend it was read from.
    fn digest(&self, h: &mut Sha256) {
        match self {
            Cell::Null => h.update([0]),
            Cell::Int(v) => {
                h.update([1]);
                h.update(v.to_le_bytes());
            }
            Cell::Bool(b) => {
                h.update([1]);
                h.update(i64::from(*b).to_le_bytes());
            }
            Cell::Real(v) => {
                h.update([2]);
                h.update(v.to_bits().to_le_bytes());
            }
            Cell::Text(v) => {
                h.update([3]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            Cell::Blob(v) => {
                h.update([4]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
    }
}

/// A table of one side: its columns (as that side has them) and its key.
#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub columns: Vec<(String, Kind)>,
    pub key: Vec<String>,
}

impl Table {
    pub fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    }

    pub fn key_kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.key.iter().map(|k| {
            self.columns
                .iter()
                .find(|(n, _)| n == k)
                .map_or(Kind::Int, |(_, kind)| *kind)
        })
    }

    /// Where each column of `other` is among this table's (the sides have the same columns,
    /// which [`plan`] made sure of).
    pub fn order_of(&self, other: &Table) -> Vec<usize> {
        self.positions(other.columns.iter().map(|(n, _)| n))
    }

    /// Where the key's columns are.
    fn key_positions(&self) -> Vec<usize> {
        self.positions(self.key.iter())
    }

    fn positions<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<usize> {
        names
            .map(|n| {
                self.columns
                    .iter()
                    .position(|(m, _)| m == n)
                    .expect("a column of both sides")
            })
            .collect()
    }

    /// Rows per chunk: bounded in values bound and in rows.
    fn chunk(&self) -> usize {
        (CHUNK_VALUES / self.columns.len().max(1)).clamp(1, CHUNK_ROWS)
    }

    /// The run a row belongs to (`None`: the rest).
    fn run_of(&self, row: &[Cell]) -> Option<i64> {
        let column = if self.name == "runs" { "id" } else { "run_id" };
        let i = self.columns.iter().position(|(n, _)| n == column)?;
        match row[i] {
            Cell::Int(id) => Some(id),
            _ => None,
        }
    }
}

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Rows copied by this run, per table (an earlier, interrupted run copied the others).
    pub copied: BTreeMap<String, u64>,
    /// Rows in each table, both sides agreeing.
    pub rows: BTreeMap<String, u64>,
    /// Runs whose checksums agree.
    pub runs: u64,
    /// Whether this run went on from an earlier, interrupted one.
    pub resumed: bool,
}

/// Copies the database at `from` to `to` (created if missing: a new SQLite file, or an
/// empty PostgreSQL database), then verifies the copy. Progress goes to stderr.
pub async fn migrate(from: &Location, to: &Location) -> anyhow::Result<Report> {
    anyhow::ensure!(from != to, "--from and --to are the same database");
    if let Location::Sqlite(path) = from {
        anyhow::ensure!(path.is_file(), "no database at {}", path.display());
    }
    // Neither side may have a server writing (SQLite says so; see docs/postgres.md).
    let _locks = [from, to]
        .into_iter()
        .filter_map(|at| match at {
            Location::Sqlite(path) => Some(path),
            Location::Postgres(_) => None,
        })
        .map(|p| super::lock::acquire(p).with_context(|| format!("{} is in use", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let source = open(from).await.context("the source")?;
    let target = open(to).await.context("the target")?;
    let tables = plan(&source, &target).await?;
    same_runs(&source, &target, &tables[0]).await?;
    let mut report = Report::default();
    let progress = Progress::new();
    for (src, dst) in &tables {
        let total = on_backend!(&source, db, sql => sql::copy::count(db, src).await)?;
        let resume_after = on_backend!(&target, db, sql => sql::copy::last_key(db, dst).await)?;
        report.resumed |= resume_after.is_some();
        let copied = copy_table(&source, &target, src, dst, resume_after, total, &progress).await?;
        report.copied.insert(src.name.clone(), copied);
    }
    let dst: Vec<Table> = tables.iter().map(|(_, d)| d.clone()).collect();
    on_backend!(&target, db, sql => sql::copy::finish(db, &dst).await)?;
    progress.say("verifying: counts and per-run checksums of both sides");
    let (want, got) = (
        sums(&source, &tables, true).await?,
        sums(&target, &tables, false).await?,
    );
    for (name, n) in &want.rows {
        let m = got.rows.get(name).copied().unwrap_or(0);
        anyhow::ensure!(
            *n == m,
            "table {name}: {n} rows in the source, {m} in the copy"
        );
    }
    let differ: Vec<String> = want
        .runs
        .iter()
        .filter(|(run, sum)| got.runs.get(*run) != Some(*sum))
        .map(|(run, _)| run.to_string())
        .collect();
    anyhow::ensure!(
        differ.is_empty() && want.runs.len() == got.runs.len(),
        "the copy differs from the source in runs {}",
        differ.join(", ")
    );
    anyhow::ensure!(
        want.rest == got.rest,
        "the copy's launches, people or sessions differ"
    );
    report.rows = want.rows;
    report.runs = want.runs.len() as u64;
    close(source).await;
    close(target).await;
    Ok(report)
}

/// A side, its schema made current (an older SQLite file is migrated as `keel serve` would).
async fn open(at: &Location) -> anyhow::Result<Pool> {
    Ok(match at {
        Location::Sqlite(path) => Pool::Sqlite(sqlite::setup(path).await?),
        Location::Postgres(url) => Pool::Postgres(postgres::setup(url, 2).await?),
    })
}

async fn close(pool: Pool) {
    on_backend!(pool, db, _sql => db.close().await)
}

/// Each table of both sides: the same tables, the same columns.
async fn plan(source: &Pool, target: &Pool) -> anyhow::Result<Vec<(Table, Table)>> {
    let known: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
    for (side, pool) in [("source", source), ("target", target)] {
        let found = on_backend!(pool, db, sql => sql::copy::tables(db).await)?;
        let unknown: Vec<_> = found
            .iter()
            .filter(|t| !known.contains(&t.as_str()))
            .collect();
        anyhow::ensure!(
            unknown.is_empty(),
            "the {side} has tables keel migrate does not know: {unknown:?}"
        );
    }
    let mut out = Vec::new();
    for (name, key) in TABLES {
        let table = |columns| Table {
            name: (*name).to_owned(),
            columns,
            key: key.iter().map(|k| (*k).to_owned()).collect(),
        };
        let src = table(on_backend!(source, db, sql => sql::copy::columns(db, name).await)?);
        let dst = table(on_backend!(target, db, sql => sql::copy::columns(db, name).await)?);
        let names = |t: &Table| {
            let mut n: Vec<String> = t.columns.iter().map(|(c, _)| c.clone()).collect();
            n.sort();
            n
        };
        anyhow::ensure!(
            names(&src) == names(&dst),
            "table {name} has columns {:?} in the source and {:?} in the target",
            names(&src),
            names(&dst)
        );
        out.push((src, dst));
    }
    Ok(out)
}

/// Refuses a target that holds runs the source does not: only an earlier, interrupted copy
/// of this source may be gone on with.
async fn same_runs(
    source: &Pool,
    target: &Pool,
    (src, dst): &(Table, Table),
) -> anyhow::Result<()> {
    let read = |pool: &Pool, t: &Table| {
        let (pool, t) = (pool.clone(), t.clone());
        async move {
            on_backend!(&pool, db, sql => {
                let mut conn = db.acquire().await?;
                sql::copy::read(&mut conn, &t, None, usize::MAX >> 2).await
            })
        }
    };
    let theirs = read(target, dst).await?;
    if theirs.is_empty() {
        return Ok(());
    }
    let ours = read(source, src).await?;
    let order = dst.order_of(src);
    for row in &theirs {
        let as_source: Vec<Cell> = order
            .iter()
            .zip(&src.columns)
            .map(|(&i, (_, kind))| kind.convert(row[i].clone()).unwrap_or(Cell::Null))
            .collect();
        anyhow::ensure!(
            ours.contains(&as_source),
            "the target holds runs that are not the source's: give an empty database, or the \
             one an interrupted copy of this source left"
        );
    }
    Ok(())
}

/// Copies the rows of one table after `after` (the target's last key), a chunk per
/// transaction; how many.
async fn copy_table(
    source: &Pool,
    target: &Pool,
    src: &Table,
    dst: &Table,
    mut after: Option<Vec<Cell>>,
    total: u64,
    progress: &Progress,
) -> anyhow::Result<u64> {
    let mut done = match &after {
        Some(_) => on_backend!(target, db, sql => sql::copy::count(db, dst).await)?,
        None => 0,
    };
    let started = done;
    let chunk = src.chunk();
    let key_at = src.key_positions();
    progress.table(&src.name, done, total);
    loop {
        let rows = on_backend!(source, db, sql => {
            let mut conn = db.acquire().await?;
            sql::copy::read(&mut conn, src, after.as_deref(), chunk).await
        })?;
        let Some(last) = rows.last() else { break };
        after = Some(key_at.iter().map(|&i| last[i].clone()).collect());
        let n = rows.len() as u64;
        let written: StoreResult<()> = on_backend!(target, db, sql => {
            let mut tx = db.begin().await?;
            sql::copy::write(&mut tx, dst, src, rows).await?;
            tx.commit().await?;
            Ok(())
        });
        written.with_context(|| format!("copying {}", src.name))?;
        done += n;
        progress.table(&src.name, done, total);
    }
    progress.done(&src.name, done);
    Ok(done - started)
}

/// Row counts and checksums of one side.
struct Sums {
    rows: BTreeMap<String, u64>,
    runs: BTreeMap<i64, [u8; 32]>,
    rest: [u8; 32],
}

async fn sums(pool: &Pool, tables: &[(Table, Table)], source: bool) -> anyhow::Result<Sums> {
    let mut rows = BTreeMap::new();
    let mut runs: BTreeMap<i64, Sha256> = BTreeMap::new();
    let mut rest = Sha256::new();
    for (src, dst) in tables {
        let t = if source { src } else { dst };
        // Both sides hashed in the source's column order.
        let order = t.order_of(src);
        let key_at = t.key_positions();
        let mut after: Option<Vec<Cell>> = None;
        let mut n = 0u64;
        loop {
            let chunk = on_backend!(pool, db, sql => {
                let mut conn = db.acquire().await?;
                sql::copy::read(&mut conn, t, after.as_deref(), t.chunk()).await
            })?;
            let Some(last) = chunk.last() else { break };
            after = Some(key_at.iter().map(|&i| last[i].clone()).collect());
            for row in &chunk {
                n += 1;
                let h = match t.run_of(row) {
                    Some(run) => runs.entry(run).or_default(),
                    None => &mut rest,
                };
                h.update(t.name.as_bytes());
                for &i in &order {
                    row[i].digest(h);
                }
            }
        }
        rows.insert(t.name.clone(), n);
    }
    Ok(Sums {
        rows,
        runs: runs
            .into_iter()
            .map(|(r, h)| (r, h.finalize().into()))
            .collect(),
        rest: rest.finalize().into(),
    })
}

/// Progress on stderr: a line redrawn in place on a terminal, a line per table otherwise.
struct Progress {
    live: bool,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            live: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn table(&self, name: &str, done: u64, total: u64) {
        if !self.live {
            return;
        }
        let width = 30;
        let filled = (done * width)
            .checked_div(total)
            .unwrap_or(width)
            .min(width) as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(filled),
            ".".repeat(width as usize - filled)
        );
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{name:>10} [{bar}] {done}/{total} rows");
        let _ = err.flush();
    }

    fn done(&self, name: &str, rows: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        if self.live {
            eprint!("\r\x1b[K");
        }
        eprintln!("{name:>10}: {rows} rows ({secs:.1} s)");
    }

    fn say(&self, what: &str) {
        eprintln!("{what}");
    }
}
