//! The keel server: HTTP API, SQLite storage, live hub.
//!
//! - [`alerts`]: derived alerts (NaN, spikes, depth growth, runaway logits), pure logic.
//! - [`assets`]: the pages' scripts and styles, built in.
//! - [`routes`]: every URL, each area's handlers (extract → call → respond).
//! - [`storage`]: all SQL — the store, its single writer, the series queries.
//! - [`hub`]: live fan-out of committed changes to SSE subscribers.
//! - [`launches`]: ablation grids launched from the browser: the trainer queue and processes.
//! - [`notices`]: what the operator must know that belongs to no run, for the runs page.
//! - [`auth`]: who may write: the operator token, or a signed-in session with its CSRF token.
//! - [`sessions`]: the signed-in browser sessions (in the database, with an expiry).
//! - [`error`]: the error type and the extractors that answer in its shape.
//! - [`views`]: the pages' template structs and the formatting of their values.
//! - [`charts`]: heatmaps and line charts rendered as PNG or SVG (plotters).
//! - [`watchdog`]: marks runs whose trainer went silent as `lost`.
//!
//! [`serve`] is the whole server given a bound listener, so tests run it on port 0.

pub mod alerts;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod error;
pub mod hub;
pub mod launches;
pub mod notices;
pub mod routes;
pub mod sessions;
pub mod storage;
pub mod views;
pub mod watchdog;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::launches::{LaunchConfig, Launches};
use crate::notices::Notices;
use crate::sessions::Sessions;
use crate::storage::Store;

/// Everything the server can be told. Every field has a default (see [`Config::new`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// The database: a SQLite file or a PostgreSQL URL.
    pub db: storage::Location,
    /// The operator and ingest secret.
    pub token: String,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Bytes of request bodies being received at once, over all requests; past it a request
    /// is answered 503 with `Retry-After` before its body is read.
    pub bodies_in_flight: usize,
    /// A folder to serve the pages' CSS and JS from; `None` serves the copies built in.
    pub static_dir: Option<PathBuf>,
    /// A running run not heard from for this long shows as `lost`.
    pub lost_after: Duration,
    /// The least time without a step before a `running` run is `stalled` (see `watchdog`).
    pub stall_min: Duration,
    /// How long shutdown waits for open requests before it stops anyway.
    pub shutdown_grace: Duration,
    /// How long a browser stays signed in after `POST /login`.
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (only sent over HTTPS): set it behind a TLS proxy.
    pub secure_cookie: bool,
    /// Launching ablation grids from the browser; `None` turns it off (the launch endpoints
    /// answer 404 and the runs page has no launch panel).
    pub launch: Option<LaunchConfig>,
    /// Shown on the runs page; whoever starts the server may keep a clone and add to it.
    pub notices: Notices,
    /// Webhooks every incident and rule firing is posted to (see `webhooks`).
    pub webhooks: Vec<String>,
    /// The first retry's delay of a failed webhook, doubled for each next one.
    pub webhook_backoff: Duration,
    /// The server's address as others reach it (launched trainers on other nodes, links in
    /// webhooks); the listener's own address when unset.
    pub public_url: Option<String>,
    /// Reads need a sign-in too (a token or a session): pages, the API and the live streams;
    /// only `/login`, `/healthz` and the static files stay open.
    pub private: bool,
    /// This server's name among those sharing its database, which owns the launches it
    /// starts; `None`: `<host name>:<port>`.
    pub replica: Option<String>,
}

impl Config {
    pub fn new(db: impl Into<storage::Location>, token: String) -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: db.into(),
            token,
            body_limit: 32 * 1024 * 1024,
            bodies_in_flight: 64 * 1024 * 1024,
            static_dir: None,
            lost_after: Duration::from_secs(60),
            stall_min: watchdog::STALL_MIN,
            shutdown_grace: Duration::from_secs(5),
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookie: false,
            launch: None,
            notices: Notices::default(),
            webhooks: Vec::new(),
            webhook_backoff: Duration::from_secs(1),
            public_url: None,
            private: false,
            replica: None,
        }
    }
}

/// What every handler gets: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Hub,
    pub sessions: Sessions,
    pub config: Arc<Config>,
    /// The launched trainers, when launching is on.
    pub launches: Option<Launches>,
    /// Cancelled at shutdown: long-lived responses (SSE, long polls) end on it.
    pub shutdown: CancellationToken,
    /// One permit per byte of request body being received (see `Config::bodies_in_flight`).
    pub bodies: Arc<tokio::sync::Semaphore>,
}

/// Opens the store and serves on `listener` until `shutdown` is cancelled. Then it stops the
/// trainers it launched — while still serving, so that they can report their last steps —
/// and waits at most `config.shutdown_grace` for open requests to finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (store, changes) = Store::open(&config.db).await?;
    let own = match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => own_url(listener.local_addr().context("the listener's address")?),
    };
    store.notify_to(webhooks::Notifier::spawn(
        config.webhooks.clone(),
        Some(own.clone()),
        config.webhook_backoff,
    ));
    let hub = Hub::spawn(changes);
    let grace = config.shutdown_grace;
    let launches = match &config.launch {
        Some(launch) => {
            let token = config.token.clone();
            let replica = config
                .replica
                .clone()
                .unwrap_or_else(|| default_replica(listener.local_addr().ok()));
            Some(Launches::open(launch.clone(), own, token, store.clone(), replica).await?)
        }
        None => None,
    };
    let bodies = tokio::sync::Semaphore::new(config.bodies_in_flight.min(u32::MAX as usize));
    let state = AppState {
        sessions: Sessions::new(config.session_ttl, store.clone()),
        store,
        hub,
        bodies: Arc::new(bodies),
        config: Arc::new(config),
        launches: launches.clone(),
        shutdown: shutdown.clone(),
    };
    watchdog::spawn(state.clone());
    let app = routes::router(state);
    // Cancelled once the launched trainers have stopped: then HTTP stops.
    let closing = CancellationToken::new();
    let closed = closing.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        if let Some(launches) = launches {
            launches.stop_all().await;
        }
        closed.cancel();
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(closing.clone().cancelled_owned());
    let deadline = async move {
        closing.cancelled_owned().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result.context("serving HTTP"),
        () = deadline => {
            tracing::warn!("open connections did not finish within {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

/// The URL this server's own trainers reach it at: a listener on every interface is reached
/// over loopback.
/// `<host name>:<port>`: a name a server keeps across restarts in one place (a container
/// keeps its host name), unlike a process id.
fn default_replica(addr: Option<SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keel".into());
    match addr {
        Some(a) => format!("{host}:{}", a.port()),
        None => host,
    }
}

fn own_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::own_url;

    #[test]
    fn launched_trainers_reach_a_server_on_every_interface_over_loopback() {
        assert_eq!(
            own_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(own_url("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(own_url("10.0.0.2:9".parse().unwrap()), "http://10.0.0.2:9");
    }
}
