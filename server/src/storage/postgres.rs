//! PostgreSQL: the store shared by several servers on one database.
//!
//! The SQL under `sql/` is compiled here a second time, with [`Db`] naming PostgreSQL.
//! What only PostgreSQL needs is the [`Relay`] between the servers on one database:
//!
//! - **Taking turns.** Each server's writer batches its writes into transactions as on SQLite;
//!   every transaction first takes one transaction-scoped advisory lock, so writes from all
//!   servers are applied one transaction at a time, in one order. A writer that finds the
//!   database moved on since its own last commit (another server wrote) forgets its caches
//!   and takes up the database's arrival numbers, so summaries stay exact and `seq` and event
//!   ids grow in commit order across servers.
//! - **Hearing each other.** A transaction's changes are announced with `NOTIFY` (delivered at
//!   commit, in commit order). Every server, the writing one included, publishes changes to its
//!   live streams only as they come back through its `LISTEN`, so all servers publish in the
//!   same order. A server publishes its own changes from memory; another's it rebuilds: small
//!   ones travel in the notification, steps (and anything large) are read back by reference.
//!   Notifications missed while the listening connection was down are made up for with a
//!   `resync` to every run that changed meanwhile.
//! - **Launches.** A launch record written is announced on a channel of its own; the other
//!   servers hear its id ([`LaunchNews`]) and show the launch as it now is. On that channel a
//!   server also asks the one running a launch to cancel it, and hears the answer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use keel_protocol::LiveMessage;
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::launches::{ASK_TIMEOUT_S, CancelAnswer, CancelAsk, LaunchNews};
pub use super::{Change, Cursor, StoreError, StoreResult, codec, lock, now, ops, summary};

pub type Db = sqlx::Postgres;
pub type Conn = sqlx::PgConnection;
pub type Pool = sqlx::PgPool;
pub type DbRow = sqlx::postgres::PgRow;
pub const POSTGRES: bool = true;

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

/// The schema (`migrations/postgres/`), applied at start-up; sqlx holds an advisory lock
/// while it migrates, so servers starting together apply it once.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the servers on one database announce their commits on.
const CHANNEL: &str = "keel_changes";
/// The channel they announce the launch records they write on.
const LAUNCHES: &str = "keel_launches";
/// The advisory lock every write transaction takes (any fixed number; "keel" in ASCII).
const WRITE_LOCK: i64 = 0x6b65_656c;
/// A notification's payload must stay under PostgreSQL's 8000 bytes.
const MAX_PAYLOAD: usize = 7_000;
/// Inline changes larger than this travel by reference.
const MAX_INLINE: usize = 2_000;

/// `url` naming the database `name` on the same server instead of its own.
pub fn database_url(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before, query) = rest
        .split_once('?')
        .map_or((rest, None), |(a, q)| (a, Some(q)));
    let authority = before.split_once('/').map_or(before, |(a, _)| a);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .with_context(|| format!("reading the database URL {}", super::redact(url)))?
        .application_name("keel")
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool on the database at `url`, its schema made current.
pub async fn setup(url: &str, connections: u32) -> anyhow::Result<Pool> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(url)?)
        .await
        .with_context(|| format!("connecting to {}", super::redact(url)))?;
    MIGRATIONS.run(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// The store's connections: a read pool and the writer's pool of one (which reconnects if
/// the database restarts).
pub async fn open(url: &str) -> anyhow::Result<(Pool, Pool)> {
    let read = setup(url, 8).await?;
    let write = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options(url)?)
        .await
        .with_context(|| format!("connecting to {}", super::redact(url)))?;
    Ok((read, write))
}

/// What one server's writer shares with the others on the database, and with its own
/// listener.
pub struct Relay {
    /// This server among those on the database, for the notifications it sends.
    origin: u64,
    /// Transactions announced, numbered.
    next: AtomicU64,
    /// This server's own announced changes by transaction, until its listener hears of them.
    pending: Mutex<HashMap<u64, Vec<Change>>>,
    /// Cancelled when the writer stops (the store is gone): the listener stops too.
    closed: tokio_util::sync::CancellationToken,
    /// The launches the other servers write, as the listener hears of them.
    launches: broadcast::Sender<LaunchNews>,
    /// This server's questions to the others, numbered, and who waits for each answer.
    asked: AtomicU64,
    answers: Mutex<HashMap<u64, oneshot::Sender<CancelAnswer>>>,
}

/// What travels on the launches' channel.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum LaunchNote {
    /// Server `o` wrote launch `id`'s record.
    Saved {
        o: u64,
        id: i64,
    },
    Cancel(CancelAsk),
    /// The answer to question `ask` of server `to`.
    Answer {
        to: u64,
        ask: u64,
        answer: CancelAnswer,
    },
}

impl Relay {
    pub fn new() -> anyhow::Result<Relay> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Relay {
            // Positive, so that it survives a trip through JSON readers that use doubles.
            origin: u64::from_le_bytes(bytes) >> 12,
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            closed: tokio_util::sync::CancellationToken::new(),
            launches: broadcast::channel(256).0,
            asked: AtomicU64::new(0),
            answers: Mutex::new(HashMap::new()),
        })
    }

    /// What this server hears from now on of the launches of the others.
    pub fn launch_news(&self) -> broadcast::Receiver<LaunchNews> {
        self.launches.subscribe()
    }

    /// Announces that the transaction writes launch `id`'s record (sent if it commits).
    pub async fn announce_launch(&self, tx: &mut Conn, id: i64) -> StoreResult<()> {
        let note = LaunchNote::Saved { o: self.origin, id };
        tell(&mut *tx, &note).await
    }

    /// Asks server `to` to cancel its launch `launch` (or that launch's `variant` alone) and
    /// waits for its answer; `None` when none came within [`ASK_TIMEOUT_S`].
    pub async fn ask_to_cancel(
        &self,
        db: &Pool,
        to: &str,
        launch: i64,
        variant: Option<String>,
    ) -> StoreResult<Option<CancelAnswer>> {
        let ask = self.asked.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.answers.lock().expect("relay lock").insert(ask, reply);
        let note = LaunchNote::Cancel(CancelAsk {
            to: to.to_owned(),
            launch,
            variant,
            from: self.origin,
            ask,
        });
        let sent = tell(db, &note).await;
        let limit = Duration::from_secs(ASK_TIMEOUT_S.into());
        let answered = match sent {
            Ok(()) => tokio::time::timeout(limit, answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        self.answers.lock().expect("relay lock").remove(&ask);
        sent.map(|()| answered)
    }

    /// Answers another server's [`CancelAsk`].
    pub async fn answer(
        &self,
        db: &Pool,
        asked: &CancelAsk,
        answer: CancelAnswer,
    ) -> StoreResult<()> {
        let note = LaunchNote::Answer {
            to: asked.from,
            ask: asked.ask,
            answer,
        };
        tell(db, &note).await
    }

    /// A notification on the launches' channel.
    fn hear_launch(&self, payload: &str) {
        let note = match serde_json::from_str(payload) {
            Ok(note) => note,
            Err(e) => {
                tracing::warn!("a launch notification that does not read ({e}): {payload:?}");
                return;
            }
        };
        let news = match note {
            LaunchNote::Saved { o, .. } if o == self.origin => return,
            LaunchNote::Saved { id, .. } => LaunchNews::Changed(id),
            LaunchNote::Cancel(ask) => LaunchNews::Cancel(ask),
            LaunchNote::Answer { to, ask, answer } => {
                if to == self.origin
                    && let Some(reply) = self.answers.lock().expect("relay lock").remove(&ask)
                {
                    let _ = reply.send(answer);
                }
                return;
            }
        };
        let _ = self.launches.send(news);
    }

    /// Waits for this transaction's turn among every server's writers; answers where the
    /// database stands, for the writer to see whether someone else wrote since.
    pub async fn take_turn(&self, tx: &mut Conn) -> StoreResult<Option<Cursor>> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(Some(runs::write_cursor(&mut *tx).await?))
    }

    /// Announces the transaction's changes (sent if it commits) and keeps them for this
    /// server's listener to publish: `changes` is left empty. Answers the transaction's number.
    pub async fn announce(
        &self,
        tx: &mut Conn,
        changes: &mut Vec<Change>,
    ) -> StoreResult<Option<u64>> {
        if changes.is_empty() {
            return Ok(None);
        }
        let t = self.next.fetch_add(1, Ordering::Relaxed);
        let mut payloads = Vec::new();
        let mut items: Vec<String> = Vec::new();
        let mut size = 0;
        for change in changes.iter() {
            let item = serde_json::to_string(&Item::of(change)).map_err(anyhow::Error::from)?;
            if size + item.len() > MAX_PAYLOAD && !items.is_empty() {
                payloads.push(self.payload(t, &items));
                (items, size) = (Vec::new(), 0);
            }
            size += item.len() + 1;
            items.push(item);
        }
        payloads.push(self.payload(t, &items));
        sqlx::query(
            "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i",
        )
        .bind(CHANNEL)
        .bind(payloads)
        .execute(&mut *tx)
        .await?;
        self.pending
            .lock()
            .expect("relay lock")
            .insert(t, std::mem::take(changes));
        Ok(Some(t))
    }

    fn payload(&self, t: u64, items: &[String]) -> String {
        format!(
            "{{\"o\":{},\"t\":{t},\"c\":[{}]}}",
            self.origin,
            items.join(",")
        )
    }

    /// The store is gone: nothing more to hear.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The transaction announced as `t` did not commit: its changes never happened.
    pub fn withdraw(&self, t: Option<u64>) {
        if let Some(t) = t {
            self.pending.lock().expect("relay lock").remove(&t);
        }
    }

    /// Everything of this server's still waiting, oldest first (the listener lost its
    /// connection, and with it the notifications that would have released them).
    fn drain(&self) -> Vec<Change> {
        let mut pending = self.pending.lock().expect("relay lock");
        let mut all: Vec<_> = pending.drain().collect();
        all.sort_by_key(|(t, _)| *t);
        all.into_iter().flat_map(|(_, c)| c).collect()
    }
}

/// Sends `note` on the launches' channel (at once on the pool; at commit in a transaction).
async fn tell<'e>(
    db: impl sqlx::Executor<'e, Database = Db>,
    note: &LaunchNote,
) -> StoreResult<()> {
    let payload = serde_json::to_string(note).map_err(anyhow::Error::from)?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(LAUNCHES)
        .bind(payload)
        .execute(db)
        .await?;
    Ok(())
}

/// A change as a notification carries it.
#[derive(Serialize, Deserialize)]
struct Item {
    /// Run, step arrival and event id of the change's cursor.
    r: i64,
    s: i64,
    e: i64,
    #[serde(flatten)]
    what: What,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum What {
    /// The message itself.
    Inline(LiveMessage),
    /// `n` steps of a branch, the last of which arrived at the cursor's `seq`.
    Steps { branch: u32, n: i64 },
    /// An event of the run, by id.
    Event(i64),
    /// A command of the run, by id.
    Command(i64),
}

impl Item {
    fn of(change: &Change) -> Item {
        let what = match &change.message {
            LiveMessage::Steps { branch, steps } => What::Steps {
                branch: *branch,
                n: steps.len() as i64,
            },
            message => {
                let size = serde_json::to_string(message).map_or(usize::MAX, |s| s.len());
                match message {
                    _ if size <= MAX_INLINE => What::Inline(message.clone()),
                    LiveMessage::Event { event } => What::Event(event.id),
                    LiveMessage::Command { command } => What::Command(command.id),
                    _ => What::Inline(LiveMessage::Resync),
                }
            }
        };
        Item {
            r: change.run_id,
            s: change.cursor.seq,
            e: change.cursor.event,
            what,
        }
    }

    /// The change, read back from the database where it travelled by reference.
    async fn change(self, db: &Pool) -> StoreResult<Option<Change>> {
        let cursor = Cursor {
            seq: self.s,
            event: self.e,
        };
        let message = match self.what {
            What::Inline(message) => message,
            What::Steps { branch, n } => {
                let steps = runs::steps_since(db, self.r, self.s - n, n).await?;
                LiveMessage::Steps {
                    branch,
                    steps: steps.into_iter().map(|(_, _, s)| s).collect(),
                }
            }
            What::Event(id) => match runs::events(db, self.r, id - 1, 1).await?.pop() {
                Some(event) => LiveMessage::Event { event },
                None => return Ok(None),
            },
            What::Command(id) => LiveMessage::Command {
                command: runs::command(db, self.r, id).await?,
            },
        };
        Ok(Some(Change {
            run_id: self.r,
            cursor,
            message,
        }))
    }
}

#[derive(Deserialize)]
struct Note {
    o: u64,
    t: u64,
    c: Vec<Item>,
}

/// Starts the listener: every server's committed changes, this one's included, go on
/// `changes` in commit order. It stops with the writer (see [`Relay::close`]), or when
/// `changes` or the pool is closed.
pub async fn listen(
    db: &Pool,
    relay: std::sync::Arc<Relay>,
    changes: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(db)
        .await
        .context("opening the listening connection")?;
    listener
        .listen_all([CHANNEL, LAUNCHES])
        .await
        .context("listening for other servers")?;
    // One task only receives (a receive is never cut short, which would lose what it was
    // reading); the other reads back what travelled by reference, several notifications at
    // once, and publishes them in the order they came.
    let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heard>();
    let hearing = relay.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                () = hearing.closed.cancelled() => break,
            };
            let event = match next {
                Ok(Some(n)) if n.channel() == LAUNCHES => {
                    hearing.hear_launch(n.payload());
                    continue;
                }
                Ok(Some(n)) => Heard::Note(n.payload().to_owned()),
                Ok(None) => {
                    let _ = hearing.launches.send(LaunchNews::Missed);
                    Heard::Lost
                }
                Err(sqlx::Error::PoolClosed) => break,
                Err(e) => {
                    tracing::warn!("listening for other servers: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if heard_tx.send(event).is_err() {
                break;
            }
        }
        tracing::debug!("listener stopped");
    });
    let db = db.clone();
    tokio::spawn(async move {
        let mut last_heard = now();
        let mut reading = FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                Some(done) = reading.next(), if !reading.is_empty() => publish_all(done, &changes),
                event = heard.recv(), if reading.len() < READ_AHEAD => match event {
                    Some(Heard::Note(payload)) => {
                        last_heard = now();
                        reading.push_back(read_back(db.clone(), relay.clone(), payload));
                    }
                    Some(Heard::Lost) => {
                        tracing::warn!("the listening connection was lost; reconnecting");
                        while let Some(done) = reading.next().await {
                            publish_all(done, &changes);
                        }
                        for change in relay.drain() {
                            let _ = changes.send(change);
                        }
                        if let Err(e) = resync_since(&db, last_heard - 1.0, &changes).await {
                            tracing::warn!("could not tell live pages to refetch: {e}");
                        }
                    }
                    None => break,
                },
                () = changes.closed() => break,
            }
        }
        relay.close();
    });
    Ok(())
}

/// What the listening connection heard.
enum Heard {
    Note(String),
    /// The connection was lost (and is being made again): notifications may be missing.
    Lost,
}

/// Notifications read back at once, at most.
const READ_AHEAD: usize = 16;

fn publish_all(done: StoreResult<Vec<Change>>, changes: &mpsc::UnboundedSender<Change>) {
    match done {
        Ok(all) => all.into_iter().for_each(|c| {
            let _ = changes.send(c);
        }),
        Err(e) => tracing::warn!("a change announced by a server did not read back: {e}"),
    }
}

/// The changes of one notification: this server's own from memory, another's rebuilt.
async fn read_back(
    db: Pool,
    relay: std::sync::Arc<Relay>,
    payload: String,
) -> StoreResult<Vec<Change>> {
    let note: Note =
        serde_json::from_str(&payload).map_err(|e| StoreError::Db(anyhow::anyhow!("{e}")))?;
    if note.o == relay.origin {
        // The first part of one of ours releases all of it; later parts find nothing.
        let mine = relay.pending.lock().expect("relay lock").remove(&note.t);
        return Ok(mine.unwrap_or_default());
    }
    let mut out = Vec::with_capacity(note.c.len());
    for item in note.c {
        out.extend(item.change(&db).await?);
    }
    Ok(out)
}

/// Tells the live streams of every run changed since `since` to refetch.
async fn resync_since(
    db: &Pool,
    since: f64,
    changes: &mpsc::UnboundedSender<Change>,
) -> StoreResult<()> {
    let runs: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE updated_at >= $1 OR seen_at >= $1
         UNION SELECT run_id FROM commands WHERE updated_at >= $1",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    for (run_id,) in runs {
        let cursor = runs::cursor(db, run_id).await?;
        let _ = changes.send(Change {
            run_id,
            cursor,
            message: LiveMessage::Resync,
        });
    }
    Ok(())
}

/// `keel check` on the database at `url`. A repair takes the writers' turn for its whole
/// transaction, so servers on the database wait for it rather than write beside it.
pub async fn check(url: &str, repair: bool) -> anyhow::Result<super::check::Report> {
    let options = options(url)?;
    let open = || async {
        options
            .connect()
            .await
            .with_context(|| format!("connecting to {}", super::redact(url)))
    };
    let (mut steps, mut stored) = (open().await?, open().await?);
    let has_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_name IN ('steps', 'summaries')",
    )
    .fetch_one(&mut stored)
    .await?;
    anyhow::ensure!(
        has_tables == 2,
        "{} is not a keel database",
        super::redact(url)
    );
    let mut repairs = match repair {
        true => Some(open().await?),
        false => None,
    };
    let mut tx = match repairs.as_mut() {
        Some(c) => {
            let mut tx = sqlx::Connection::begin(c).await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            Some(tx)
        }
        None => None,
    };
    let mut report = check::walk_all(&mut steps, &mut stored, tx.as_deref_mut()).await?;
    if let Some(tx) = tx {
        tx.commit().await.context("committing the repairs")?;
        report.repaired = true;
    }
    Ok(report)
}
