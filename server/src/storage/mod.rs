//! All SQL lives here: the store on SQLite (the default) or on PostgreSQL, its writer and
//! its readers.
//!
//! Writes go through one writer task (`sql/writer`) that batches whatever is waiting into one
//! transaction; reads use a pool of read connections in parallel. After each commit the
//! writer sends a [`Change`] per committed write, in commit order, on a channel that the live
//! hub drains — persist first, then publish, so a subscriber can always backfill from here.
//! On PostgreSQL several servers share one database: their writers take turns (a
//! transaction-scoped advisory lock), and each hears the others' commits ([`postgres`]'s
//! `LISTEN`). Nothing in this module knows about HTTP.
//!
//! The SQL under `sql/` is written once and compiled once per backend ([`sqlite`],
//! [`postgres`]); everything that is not SQL — summaries, bucketing, alerts — is shared.
//! Queries are runtime-checked `sqlx::query` calls (no compile-time database needed); every
//! storage function is exercised by the tests, on both backends.
//!
//! - [`codec`]: byte layouts of BLOB columns. - [`summary`]: bucket summaries.
//! - [`ops`]: the writes the writer takes. - [`runs`]: runs, series, branches as read.
//! - [`series`]: scalar series and layer matrices at a requested resolution.
//! - [`check`]: summaries verified against their steps, offline (`keel check`, SQLite).
//! - [`lock`]: one server per SQLite file. - [`launches`]: launched grids, kept.
//! - `door`: the [`Store`]'s methods, the only way in for the rest of the server.

pub mod backup;
pub mod check;
pub mod codec;
mod door;
pub mod launches;
pub mod lock;
pub mod migrate;
pub mod ops;
// The SQL of `sql/` is compiled once per backend, on purpose.
#[allow(clippy::duplicate_mod)]
pub mod postgres;
pub mod runs;
pub mod series;
pub mod sessions;
pub mod sqlite;
pub mod summary;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_protocol::{CommandRecord, EventRecord, LiveMessage, RunStatus};
use tokio::sync::{mpsc, oneshot};

pub use door::Snapshot;
pub use ops::NewEvent;
use ops::WriteOp;

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

/// Where the store lives: a SQLite file (the default) or a PostgreSQL database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL, as libpq takes it.
    Postgres(String),
}

impl std::str::FromStr for Location {
    type Err = String;

    /// `postgres://…` or `postgresql://…` is PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a
    /// plain path is a SQLite file.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the database is empty: give a file or a postgres:// URL".into());
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(s.to_owned()));
        }
        if let Some((scheme, _)) = s.split_once("://")
            && scheme != "sqlite"
            && !scheme.contains(['/', '.'])
        {
            return Err(format!(
                "`{scheme}://` is not a database keel runs on: give a SQLite file or a postgres:// URL"
            ));
        }
        let path = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
            .unwrap_or(s);
        if path.is_empty() {
            return Err("`sqlite://` needs a file after it".into());
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Location {
    /// A URL's password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with its password (`user:password@`, or a `password=` parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split_once(':').map_or(user, |(n, _)| n);
            format!("{name}:***@{host}")
        }
        _ => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::Sqlite(path.to_owned())
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Sqlite(path)
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::Sqlite(path.clone())
    }
}

impl From<&Location> for Location {
    fn from(at: &Location) -> Self {
        at.clone()
    }
}

/// The read side of a store, on one backend or the other.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(sqlite::Pool),
    Postgres(postgres::Pool),
}

/// `$body` with `$db` bound to the backend's pool and `$sql` to its SQL modules
/// ([`sqlite`] or [`postgres`]): the same code for both, compiled for each.
macro_rules! on_backend {
    ($pool:expr, $db:ident, $sql:ident => $body:expr) => {
        match $pool {
            $crate::storage::Pool::Sqlite($db) => {
                #[allow(unused_imports)]
                use $crate::storage::sqlite as $sql;
                $body
            }
            $crate::storage::Pool::Postgres($db) => {
                #[allow(unused_imports)]
                use $crate::storage::postgres as $sql;
                $body
            }
        }
    };
}
pub(crate) use on_backend;

/// The store: a read pool and the queue of the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: Pool,
    writer: mpsc::Sender<WriteOp>,
    /// Where the writer sends its notices once they are committed (see [`Store::notify_to`]).
    notifier: Arc<OnceLock<crate::webhooks::Notifier>>,
    /// On PostgreSQL, what is heard from the other servers on the database.
    relay: Option<Arc<postgres::Relay>>,
}

impl Store {
    /// Opens the database at `at` (a SQLite file is created if missing), applies migrations
    /// and starts the writer. Committed changes arrive on the returned receiver, in commit
    /// order: on PostgreSQL, those of every server on the database.
    pub async fn open(
        at: impl Into<Location>,
    ) -> anyhow::Result<(Store, mpsc::UnboundedReceiver<Change>)> {
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let notifier = Arc::new(OnceLock::new());
        let (read, writer, shared) = match at.into() {
            Location::Sqlite(path) => {
                let (read, write, lock) = sqlite::open(&path).await?;
                let relay = Arc::new(sqlite::Relay);
                let writer =
                    sqlite::writer::spawn(write, changes_tx, notifier.clone(), Some(lock), relay)
                        .await?;
                (Pool::Sqlite(read), writer, None)
            }
            Location::Postgres(url) => {
                let (read, write) = postgres::open(&url).await?;
                let relay = Arc::new(postgres::Relay::new()?);
                postgres::listen(&read, relay.clone(), changes_tx.clone()).await?;
                let writer = postgres::writer::spawn(
                    write,
                    changes_tx,
                    notifier.clone(),
                    None,
                    relay.clone(),
                )
                .await?;
                (Pool::Postgres(read), writer, Some(relay))
            }
        };
        let store = Store {
            read,
            writer,
            notifier,
            relay: shared,
        };
        Ok((store, changes_rx))
    }

    /// Whether other servers may share the database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.read, Pool::Postgres(_))
    }

    /// On a shared database, the news of the launches the other servers write, from now on.
    pub fn launch_news(&self) -> Option<tokio::sync::broadcast::Receiver<launches::LaunchNews>> {
        self.relay.as_ref().map(|r| r.launch_news())
    }

    /// Asks server `owner` on the database to cancel its launch `launch` (or that launch's
    /// `variant` alone); its answer, or `None` when it gave none in time.
    pub async fn ask_to_cancel(
        &self,
        owner: &str,
        launch: i64,
        variant: Option<String>,
    ) -> StoreResult<Option<launches::CancelAnswer>> {
        let (db, relay) = self.shared()?;
        relay.ask_to_cancel(db, owner, launch, variant).await
    }

    /// Answers another server's request to cancel.
    pub async fn answer(
        &self,
        asked: &launches::CancelAsk,
        answer: launches::CancelAnswer,
    ) -> StoreResult<()> {
        let (db, relay) = self.shared()?;
        relay.answer(db, asked, answer).await
    }

    /// The database and the relay to the other servers on it (PostgreSQL only).
    fn shared(&self) -> StoreResult<(&sqlx::PgPool, &postgres::Relay)> {
        match (&self.read, &self.relay) {
            (Pool::Postgres(db), Some(relay)) => Ok((db, relay)),
            _ => Err(anyhow::anyhow!("no other server shares this database").into()),
        }
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
        on_backend!(&self.read, db, _sql => sqlx::query("SELECT 1").execute(db).await.is_ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_a_file_or_a_postgres_url_and_anything_else_is_refused() {
        let file = |s: &str| Location::Sqlite(PathBuf::from(s));
        assert_eq!("keel.db".parse(), Ok(file("keel.db")));
        assert_eq!("/data/keel.db".parse(), Ok(file("/data/keel.db")));
        assert_eq!("sqlite:///data/keel.db".parse(), Ok(file("/data/keel.db")));
        assert_eq!("sqlite:keel.db".parse(), Ok(file("keel.db")));
        for url in [
            "postgres://keel@db/keel",
            "postgresql://u:p@h:5432/k?sslmode=require",
        ] {
            assert_eq!(url.parse(), Ok(Location::Postgres(url.into())));
        }
        for bad in ["", "  ", "mysql://root@db/keel", "sqlite://"] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        let at: Location = "postgres://keel:s3cret@db:5432/keel?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(
            at.to_string(),
            "postgres://keel:***@db:5432/keel?sslmode=require"
        );
        assert_eq!(redact("postgres://keel@db/keel"), "postgres://keel@db/keel");
        assert_eq!(
            redact("postgres:///keel?host=/tmp"),
            "postgres:///keel?host=/tmp"
        );
        assert_eq!(
            redact("postgres:///keel?user=k&password=s3cret"),
            "postgres:///keel?user=k&password=***"
        );
    }
}
