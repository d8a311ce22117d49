//! `keel bench backends --postgres URL`: the ingest, query, memory and load figures measured
//! on SQLite and on PostgreSQL in one run, printed in one table beside their budgets.
//!
//! The same work on both, interleaved where it repeats (ingest and query rounds alternate
//! between the backends, so that a noisy moment of a shared machine falls on both), each
//! backend on a database of its own: files in the bench folder, and databases made for the
//! run on the PostgreSQL server at `URL` (which needs the right to create databases; they are
//! dropped at the end). PostgreSQL's version and settings are printed first.
//!
//! - ingest: values/s into the store, 6 rounds of 4,000 trainer steps (178 values) per backend.
//! - query: a 1,000,000-step × 64-layer heatmap to 1,000 columns and a 1,000,000-step scalar
//!   series to 2,000 points (query + JSON), the median of 15 each.
//! - memory: a `keel serve` process after reading every one of 100 runs × 100,000 steps.
//! - load: `keel bench load` (16 writers, 50 live and 50 stalled readers) for 60 s; on
//!   PostgreSQL also across two servers: writers on one, readers on the other.

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use keel_server::storage::{Location, postgres};

use super::{create, fill, median, open, trainer_step};

/// Budgets (docs/performance.md).
const INGEST_BUDGET: f64 = 500_000.0;
const HEATMAP_BUDGET_MS: f64 = 100.0;
const SERIES_BUDGET_MS: f64 = 40.0;
const MEMORY_BUDGET_MB: f64 = 150.0;
const LAG_BUDGET_MS: f64 = 250.0;

/// Databases made on the PostgreSQL server for this run, dropped when it ends.
struct Made {
    server: String,
    names: Vec<String>,
}

impl Made {
    async fn database(&mut self, what: &str) -> anyhow::Result<Location> {
        use sqlx::Connection;
        let name = format!("keel_bench_{what}_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&self.server).await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        self.names.push(name.clone());
        Ok(Location::Postgres(postgres::database_url(
            &self.server,
            &name,
        )))
    }

    async fn drop_all(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.server).await?;
        for name in &self.names {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

fn arg(at: &Location) -> OsString {
    match at {
        Location::Sqlite(p) => p.clone().into_os_string(),
        Location::Postgres(u) => u.into(),
    }
}

/// One row of the table: a figure, its value on each backend, its budget.
struct Row(String, String, String, String);

pub async fn backends(dir: &Path, scale: u64, server: &str) -> anyhow::Result<()> {
    let mut made = Made {
        server: server.to_owned(),
        names: Vec::new(),
    };
    settings(server).await?;
    let result = measure(dir, scale, &mut made).await;
    made.drop_all().await?;
    let rows = result?;
    println!();
    println!("| figure | SQLite | PostgreSQL | budget |");
    println!("|---|---|---|---|");
    for Row(what, sqlite, pg, budget) in rows {
        println!("| {what} | {sqlite} | {pg} | {budget} |");
    }
    Ok(())
}

/// `keel bench replicas`: the load across two servers on one PostgreSQL database alone.
pub async fn replicas(scale: u64, server: &str) -> anyhow::Result<()> {
    let mut made = Made {
        server: server.to_owned(),
        names: Vec::new(),
    };
    settings(server).await?;
    let result = async {
        let at = made.database("replicas").await?;
        super::load::across(&arg(&at), 60 / scale.min(6)).await
    }
    .await;
    made.drop_all().await?;
    let figures = result?;
    anyhow::ensure!(figures.verdict(), "keel bench replicas: over budget");
    Ok(())
}

/// PostgreSQL's version and the settings that matter to these figures.
async fn settings(server: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server).await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    println!("| PostgreSQL | {version} |");
    for name in [
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "synchronous_commit",
        "fsync",
        "full_page_writes",
        "wal_level",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&mut conn)
            .await?;
        println!("| PostgreSQL {name} | {value} |");
    }
    let sqlite: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&sqlx::SqlitePool::connect("sqlite::memory:").await?)
        .await?;
    println!("| SQLite | {sqlite} (WAL, synchronous=NORMAL) |");
    Ok(())
}

fn rate(v: f64) -> String {
    format!("{:.0} values/s", v)
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

fn mb(v: f64) -> String {
    format!("{v:.1} MB")
}

async fn measure(dir: &Path, scale: u64, made: &mut Made) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let sides = [
        Location::Sqlite(dir.join("backends-ingest.db")),
        made.database("ingest").await?,
    ];
    let stores = [open(&sides[0]).await?, open(&sides[1]).await?];
    // Ingest: rounds alternate between the backends.
    let (mut rates, steps) = ([Vec::new(), Vec::new()], 4_000 / scale);
    for round in 0..6 {
        for (i, store) in stores.iter().enumerate() {
            let run = create(store, &format!("ingest-{round}"), 24).await?;
            let (values, secs) = fill(store, run, steps, 500, |s| trainer_step(s, 24)).await?;
            rates[i].push(values as f64 / secs);
        }
    }
    let [s, p] = rates.map(median);
    println!(
        "| ingest, {steps} steps × 178 values in batches of 500, median of 6 | SQLite {} | PostgreSQL {} |",
        rate(s),
        rate(p)
    );
    rows.push(Row(
        format!("store ingest ({steps} steps × 178 values, batches of 500, median of 6 rounds)"),
        rate(s),
        rate(p),
        format!("≥ {}", rate(INGEST_BUDGET)),
    ));
    drop(stores);

    // Query: one large run on each, then alternating reads.
    let steps = 1_000_000 / scale;
    let sides = [
        Location::Sqlite(dir.join("backends-query.db")),
        made.database("query").await?,
    ];
    let mut fills = Vec::new();
    let mut runs = Vec::new();
    let mut stores = Vec::new();
    for at in &sides {
        let store = open(at).await?;
        let run = create(&store, "query", 64).await?;
        let t = Instant::now();
        let (values, _) = fill(&store, run, steps, 2000, super::query_step).await?;
        fills.push(values as f64 / t.elapsed().as_secs_f64());
        runs.push(store.run_row(run).await?);
        stores.push(store);
    }
    rows.push(Row(
        format!("fill of the query run ({steps} steps × 65 values, batches of 2,000)"),
        rate(fills[0]),
        rate(fills[1]),
        "—".into(),
    ));
    let mut heat = [Vec::new(), Vec::new()];
    let mut line = [Vec::new(), Vec::new()];
    for _ in 0..15 {
        for i in 0..2 {
            let (h, l) = super::read_query_run(&stores[i], &runs[i]).await?;
            heat[i].push(h);
            line[i].push(l);
        }
    }
    let [hs, hp] = heat.map(median);
    let [ls, lp] = line.map(median);
    println!("| heatmap | SQLite {} | PostgreSQL {} |", ms(hs), ms(hp));
    println!(
        "| scalar series | SQLite {} | PostgreSQL {} |",
        ms(ls),
        ms(lp)
    );
    rows.push(Row(
        format!("heatmap, {steps} steps × 64 layers → 1,000 columns (query + JSON, median of 15)"),
        ms(hs),
        ms(hp),
        format!("≤ {HEATMAP_BUDGET_MS} ms"),
    ));
    rows.push(Row(
        format!("scalar series, {steps} steps → 2,000 points (query + JSON, median of 15)"),
        ms(ls),
        ms(lp),
        format!("≤ {SERIES_BUDGET_MS} ms"),
    ));
    drop(stores);

    // Memory: a server process reading every run.
    let (runs_n, steps) = (100 / scale, 100_000 / scale);
    let sides = [
        Location::Sqlite(dir.join("backends-memory.db")),
        made.database("memory").await?,
    ];
    let mut resident = Vec::new();
    for at in &sides {
        super::fill_runs(at, runs_n, steps).await?;
        let (mut child, url) = super::serve(arg(at))?;
        let result = super::memory_of(child.id(), url, runs_n, steps).await;
        let _ = child.kill();
        let _ = child.wait();
        let (rss, hwm) = result?;
        println!("| memory on {at} | resident {rss:.1} MB, peak {hwm:.1} MB |");
        resident.push((rss, hwm));
    }
    rows.push(Row(
        format!("server after reading every run of {runs_n} × {steps} steps: resident (peak)"),
        format!("{} ({})", mb(resident[0].0), mb(resident[0].1)),
        format!("{} ({})", mb(resident[1].0), mb(resident[1].1)),
        format!("≤ {MEMORY_BUDGET_MB} MB"),
    ));

    // Load: one server on each, then two servers on PostgreSQL.
    let seconds = 60 / scale.min(6);
    let sides = [
        Location::Sqlite(dir.join("backends-load.db")),
        made.database("load").await?,
    ];
    let mut loads = Vec::new();
    for at in &sides {
        loads.push(super::load::on(&arg(at), seconds).await?);
    }
    let across = made.database("across").await?;
    let two = super::load::across(&arg(&across), seconds).await?;
    let l = |f: &super::load::Figures| format!("{:.0} ms / {:.0} ms", f.lag_p50_ms, f.lag_p99_ms);
    rows.push(Row(
        format!("load, {seconds} s: step → SSE lag p50 / p99 (16 writers, 50 + 50 readers)"),
        l(&loads[0]),
        l(&loads[1]),
        format!("p99 ≤ {LAG_BUDGET_MS} ms"),
    ));
    rows.push(Row(
        "load: the same across two servers (writers on one, readers on the other)".into(),
        "— (one server per file)".into(),
        l(&two),
        format!("p99 ≤ {LAG_BUDGET_MS} ms"),
    ));
    rows.push(Row(
        "load: ingest POST p99, values/s stored".into(),
        format!(
            "{} , {}",
            ms(loads[0].post_p99_ms),
            rate(loads[0].values_per_s)
        ),
        format!(
            "{} , {}",
            ms(loads[1].post_p99_ms),
            rate(loads[1].values_per_s)
        ),
        "—".into(),
    ));
    rows.push(Row(
        "load: peak resident, errors".into(),
        format!("{}, {}", mb(loads[0].peak_mb), loads[0].errors),
        format!("{}, {}", mb(loads[1].peak_mb), loads[1].errors),
        format!("≤ {MEMORY_BUDGET_MB} MB, 0"),
    ));
    Ok(rows)
}
