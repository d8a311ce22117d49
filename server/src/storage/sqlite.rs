//! SQLite, the default backend: one file, one server (its writer holds the file's lock).
//!
//! The SQL under `sql/` is compiled once per backend: here with [`Db`] naming SQLite, in
//! [`postgres`](super::postgres) naming PostgreSQL. What differs between the two is decided
//! by [`POSTGRES`] where it is used.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use super::{Change, Cursor, StoreError, StoreResult, codec, lock, now, ops, summary};

pub type Db = sqlx::Sqlite;
pub type Conn = sqlx::SqliteConnection;
pub type Pool = sqlx::SqlitePool;
pub type DbRow = sqlx::sqlite::SqliteRow;
pub const POSTGRES: bool = false;

#[path = "sql/check.rs"]
pub mod check;
#[path = "sql/copy.rs"]
pub mod copy;
#[path = "sql/incidents.rs"]
pub mod incidents;
#[path = "sql/launches.rs"]
pub mod launches;
#[path = "sql/runs.rs"]
pub mod runs;
#[path = "sql/series.rs"]
pub mod series;
#[path = "sql/sessions.rs"]
pub mod sessions;
#[path = "sql/users.rs"]
pub mod users;
#[path = "sql/writer/mod.rs"]
pub mod writer;

/// The schema, one migration per change (`migrations/sqlite/`), applied in order at start-up.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

fn options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool of one on the database at `path` (created if missing), its schema made current.
/// Opening switches a new file to WAL and the migrations run, neither at the same time as
/// another process doing the same (`<db>.migrate-lock`).
pub async fn setup(path: &Path) -> anyhow::Result<Pool> {
    let migrating = lock::migrating(path)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(path)?)
        .await
        .with_context(|| format!("opening the database {}", path.display()))?;
    MIGRATIONS.run(&pool).await.context("applying migrations")?;
    drop(migrating);
    Ok(pool)
}

/// The store's connections: a read pool, and the writer's pool of one with the file's lock,
/// which it holds for as long as it runs.
pub async fn open(path: &Path) -> anyhow::Result<(Pool, Pool, lock::DbLock)> {
    let lock = lock::acquire(path)?;
    // Migrations run on a pool of one, closed before the writer takes its connection.
    setup(path).await?.close().await;
    let options = options(path)?.pragma("cache_size", "-8192");
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await
        .context("opening the writer's connection")?;
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options.read_only(true).pragma("cache_size", "-4096"))
        .await
        .context("opening read connections")?;
    Ok((read, write, lock))
}

/// One server per file: there is nobody to take turns with or to tell (see the PostgreSQL
/// backend's relay); the writer publishes its changes itself.
#[derive(Default)]
pub struct Relay;

impl Relay {
    pub async fn take_turn(&self, _tx: &mut Conn) -> StoreResult<Option<Cursor>> {
        Ok(None)
    }

    pub async fn announce(
        &self,
        _tx: &mut Conn,
        _changes: &mut Vec<Change>,
    ) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    pub fn withdraw(&self, _t: Option<u64>) {}

    pub async fn announce_launch(&self, _tx: &mut Conn, _id: i64) -> StoreResult<()> {
        Ok(())
    }

    pub fn close(&self) {}
}

/// `keel check` on the file at `path`, which must exist: read-only unless repairing, and a
/// repair holds the file's lock (not while a server writes summaries too).
pub async fn check(path: &Path, repair: bool) -> anyhow::Result<super::check::Report> {
    anyhow::ensure!(path.is_file(), "no database at {}", path.display());
    let _lock = repair.then(|| lock::acquire(path)).transpose()?;
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
    let mut repairs = match repair {
        true => Some(open().await?),
        false => None,
    };
    let mut tx = match repairs.as_mut() {
        Some(c) => Some(sqlx::Connection::begin(c).await?),
        None => None,
    };
    let mut report = check::walk_all(&mut steps, &mut stored, tx.as_deref_mut()).await?;
    if let Some(tx) = tx {
        tx.commit().await.context("committing the repairs")?;
        report.repaired = true;
    }
    Ok(report)
}
