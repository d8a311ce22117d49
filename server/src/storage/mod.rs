//! All SQL lives here: the SQLite store, its single writer and its readers.
//!
//! Writes go through one writer task ([`writer`]) that batches whatever is waiting into one
//! transaction; reads use a pool of read connections in parallel (WAL). After each commit the
//! writer sends a [`Change`] per committed write, in commit order, on a channel that the live
//! hub drains — persist first, then publish, so a subscriber can always backfill from here.
//! Nothing in this module knows about HTTP.
//!
//! Queries are runtime-checked `sqlx::query` calls (no compile-time database needed); every
//! storage function is exercised by the tests.
//!
//! - [`codec`]: byte layouts of BLOB columns. - [`summary`]: bucket summaries.
//! - [`writer`]: the writer task. - [`runs`]: reading runs, events and commands.
//! - [`series`]: scalar series and layer matrices at a requested resolution.
//! - [`check`]: summaries verified against their steps, offline (`keel check`).
//! - [`lock`]: one server per database file. - [`launches`]: launched grids, kept.
//! - `door`: the [`Store`]'s methods, the only way in for the rest of the server.

pub mod backup;
pub mod check;
pub mod codec;
mod door;
pub mod incidents;
pub mod launches;
pub mod lock;
pub mod runs;
pub mod series;
pub mod sessions;
pub mod summary;
pub mod users;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use keel_protocol::{CommandRecord, EventRecord, LiveMessage, RunStatus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use writer::WriteOp;

/// A failure that says what was wrong with a request; anything else is `Db`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where a live subscriber stands: the last step arrival (`seq`) and the last event id it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: i64,
    pub event: i64,
}

impl Cursor {
    /// SSE ids are `"<seq>-<event>"`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once('-')?;
        Some(Cursor {
            seq: a.parse().ok()?,
            event: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.seq, self.event)
    }
}

/// One committed write, for the live hub.
#[derive(Clone, Debug)]
pub struct Change {
    pub run_id: i64,
    pub cursor: Cursor,
    pub message: LiveMessage,
}

/// The schema of a SQLite database, one migration per change (`migrations/sqlite/`), applied
/// in order at start-up; each backend has a folder of its own.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The store: a read pool and the queue of the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    /// Where the writer sends its notices once they are committed (see [`Store::notify_to`]).
    notifier: Arc<OnceLock<crate::webhooks::Notifier>>,
}

impl Store {
    /// Opens (creating if missing) the database at `path`, applies migrations and starts the
    /// writer. Committed changes arrive on the returned receiver, in commit order.
    pub async fn open(path: &Path) -> anyhow::Result<(Store, mpsc::UnboundedReceiver<Change>)> {
        let lock = lock::acquire(path)?;
        // Held until the schema is current: opening switches a new file to WAL, and the
        // migrations run, neither at the same time as a `keel users` beside this server.
        let migrating = lock::migrating(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-8192")
            .log_statements(tracing::log::LevelFilter::Trace);
        // Migrations run on a pool of one, closed before the writer takes its connection.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the database {}", path.display()))?;
        SQLITE_MIGRATIONS
            .run(&setup)
            .await
            .context("applying migrations")?;
        drop(migrating);
        setup.close().await;
        let conn = options
            .connect()
            .await
            .context("opening the writer's connection")?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true).pragma("cache_size", "-4096"))
            .await
            .context("opening read connections")?;
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let notifier = Arc::new(OnceLock::new());
        let writer = writer::spawn(conn, changes_tx, notifier.clone(), lock).await?;
        let store = Store {
            read,
            writer,
            notifier,
        };
        Ok((store, changes_rx))
    }

    /// Sends incidents and rule firings to `notifier` from now on (once: a second is ignored).
    pub fn notify_to(&self, notifier: crate::webhooks::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Sends one write to the writer task and waits for its committed result.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteOp,
    ) -> StoreResult<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| anyhow::anyhow!("the writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the writer dropped a write"))?
    }

    /// Sets a run's status (with an event saying why); a status it already has changes
    /// nothing but the time it was last heard of.
    pub async fn set_status(
        &self,
        run_id: i64,
        status: RunStatus,
        message: Option<String>,
    ) -> StoreResult<()> {
        let message = message.map(|m| m.chars().take(MAX_STATUS_MESSAGE).collect());
        self.write(|r| WriteOp::SetStatus(run_id, status, message, r))
            .await
    }

    /// Is the database answering?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }
}

/// Characters of a status message kept.
const MAX_STATUS_MESSAGE: usize = 1000;

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a committed command or event becomes on the live channel.
pub fn command_change(run_id: i64, cursor: Cursor, command: CommandRecord) -> Change {
    Change {
        run_id,
        cursor,
        message: LiveMessage::Command { command },
    }
}

pub fn event_change(cursor: Cursor, event: EventRecord) -> Change {
    Change {
        run_id: event.run_id,
        cursor,
        message: LiveMessage::Event { event },
    }
}
