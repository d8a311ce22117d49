//! A keel server on a random port, on its own thread and runtime, restartable on the same
//! database file; a `keel serve` process to kill; and a trainer run on a thread of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use keel_server::storage::Location;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "e2e-token";

pub struct Server {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `db` on `addr` (port 0 for any free port).
    pub fn start(db: &Path, addr: SocketAddr) -> Server {
        Server::on(database(db), addr)
    }

    /// Serves the database at `at` on `addr`.
    pub fn on(at: Location, addr: SocketAddr) -> Server {
        let config = keel_server::Config::new(at, TOKEN.into());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = bind(addr).await;
                tx.send(listener.local_addr().unwrap()).unwrap();
                keel_server::serve(config, listener, token).await.unwrap();
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Server {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let mut resp = ureq::get(&format!("{}{path}", self.url())).call().unwrap();
        resp.body_mut().read_json().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut resp = agent
            .post(&format!("{}{path}", self.url()))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body)
            .unwrap();
        resp.body_mut().read_json().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Binds, retrying a little: a restarted server takes back the port its predecessor had.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("binding {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
}

/// Options for a proxy-tiny run against `url` with checkpoints in `dir`.
pub fn tiny(url: &str, dir: &Path, steps: u64) -> keel_trainer::TrainOptions {
    keel_trainer::TrainOptions {
        config: config("proxy-tiny.toml"),
        server: Some(url.to_owned()),
        token: Some(TOKEN.into()),
        device: "cpu".into(),
        steps: Some(steps),
        checkpoint_dir: Some(dir.join("checkpoints")),
        ..Default::default()
    }
}

/// Starts a training run on its own thread.
pub fn spawn_training(
    opts: keel_trainer::TrainOptions,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<anyhow::Result<keel_trainer::TrainSummary>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    (
        stop,
        std::thread::spawn(move || keel_trainer::train(opts, flag)),
    )
}

/// Polls `f` until it returns true, failing after `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Steps the server holds for `run`, all branches.
pub fn steps_stored(server: &Server, run: i64) -> u64 {
    server.get(&format!("/api/v1/runs/{run}"))["steps"]
        .as_u64()
        .unwrap_or(0)
}

/// The `step` column of a series answer.
pub fn steps_of(answer: &Value) -> Vec<u64> {
    answer["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

/// Lets what the link already queued arrive, then checks that the step count stands still.
pub fn assert_no_steps_while_paused(server: &Server, run: i64) {
    std::thread::sleep(Duration::from_millis(1500));
    let paused_at = steps_stored(server, run);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        steps_stored(server, run),
        paused_at,
        "the trainer kept stepping while paused"
    );
}

/// The database a test's `db` file stands for: that file, or with `KEEL_TEST_PG` set (a
/// PostgreSQL URL, as `scripts/pg-test-cluster.sh run` sets it) a database of its own on that
/// server, made on first use, so that the same tests run on both backends.
pub fn database(db: &Path) -> Location {
    let Ok(server) = std::env::var("KEEL_TEST_PG") else {
        return Location::Sqlite(db.to_owned());
    };
    if server.is_empty() {
        return Location::Sqlite(db.to_owned());
    }
    on_server(&server, db)
}

/// The database `db` stands for on the PostgreSQL server at `server`, made on first use.
fn on_server(server: &str, db: &Path) -> Location {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    let name = format!("keel_e2e_{:016x}", h.finish());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(server).await.unwrap();
        let there: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        if there.is_none() {
            let create = format!("CREATE DATABASE {name}");
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    });
    Location::Postgres(keel_server::storage::postgres::database_url(server, &name))
}

/// A PostgreSQL database for a test that needs one whatever the suite runs on: on the server
/// of `KEEL_TEST_PG`, else on one of its own (`scripts/pg-test-cluster.sh`), torn down when
/// dropped. `None`, with a note, when `KEEL_SKIP_POSTGRES=1`.
pub struct Postgres {
    pub at: Location,
    own: Option<PathBuf>,
}

impl Postgres {
    pub fn up(name: &str) -> Option<Postgres> {
        if std::env::var("KEEL_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
            eprintln!("KEEL_SKIP_POSTGRES=1: PostgreSQL test skipped");
            crate::webdriver::note_skipped();
            return None;
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-cluster.sh");
        let mut own = None;
        if std::env::var("KEEL_TEST_PG").map_or(true, |u| u.is_empty()) {
            static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("keel-pg-e2e-{}-{n}", std::process::id()));
            let out = Command::new(&script).arg("up").arg(&dir).output().unwrap();
            assert!(
                out.status.success(),
                "the PostgreSQL test server did not come up (KEEL_SKIP_POSTGRES=1 skips this):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            let url = said
                .trim()
                .strip_prefix("export KEEL_TEST_PG='")
                .and_then(|u| u.strip_suffix('\''))
                .unwrap_or_else(|| panic!("no URL in {said:?}"))
                .to_owned();
            own = Some((dir, url));
        }
        let at = match &own {
            Some((_, url)) => on_server(url, Path::new(name)),
            None => database(Path::new(name)),
        };
        Some(Postgres {
            at,
            own: own.map(|(dir, _)| dir),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = self.own.take() {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-cluster.sh");
            let _ = Command::new(script).arg("down").arg(&dir).status();
        }
    }
}

/// `--db` for a `keel` command on the database `db` stands for.
pub fn db_arg(db: &Path) -> std::ffi::OsString {
    match database(db) {
        Location::Sqlite(path) => path.into_os_string(),
        Location::Postgres(url) => url.into(),
    }
}

/// Checks every summary of the database at `db` against its steps, offline (`keel check`),
/// and that it holds `steps` steps.
pub fn assert_summaries_exact(db: &Path, steps: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(keel_server::storage::check::check(database(db), false))
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.examples);
    assert_eq!(report.steps, steps);
}

/// A `keel serve` process: killed with SIGKILL when dropped, as a crash would end it.
pub struct Process {
    child: Child,
    pub url: String,
}

impl Process {
    pub fn start(db: &Path, addr: SocketAddr) -> Process {
        Process::start_with(db, addr, |_| {})
    }

    /// The same, with `more` adding to its command (more flags, its environment, where its
    /// stderr goes).
    pub fn start_with(db: &Path, addr: SocketAddr, more: impl Fn(&mut Command)) -> Process {
        let url = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
            cmd.args(["serve", "--addr", &addr.to_string(), "--db"])
                .arg(db_arg(db))
                .env("KEEL_TOKEN", TOKEN)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            more(&mut cmd);
            let mut child = cmd.spawn().unwrap();
            // The port of the killed server may take a moment to be free again.
            while Instant::now() < deadline {
                if ureq::get(&format!("{url}/healthz")).call().is_ok() {
                    return Process { child, url };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "keel serve did not start on {addr}"
            );
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let mut resp = ureq::get(&format!("{}{path}", self.url)).call().unwrap();
        resp.body_mut().read_json().unwrap()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` (or nothing) to `url` + `path` with the token: (status, JSON answer).
pub fn post_with_token(url: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let req = agent
        .post(&format!("{url}{path}"))
        .header("Authorization", &format!("Bearer {TOKEN}"));
    let mut resp = match body {
        Some(b) => req.send_json(b),
        None => req.send_empty(),
    }
    .unwrap();
    (resp.status().as_u16(), resp.body_mut().read_json().unwrap())
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
