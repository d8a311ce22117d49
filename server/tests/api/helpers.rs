//! `TestApp`: a real keel server on a random port over a fresh database, driven over real
//! HTTP. The server runs on its own thread and runtime, so tests are plain blocking code.
//!
//! The database is a temporary SQLite file; with `KEEL_TEST_PG` set (a PostgreSQL URL, as
//! `scripts/pg-test-cluster.sh run` sets it) it is a fresh database on that server instead,
//! dropped after the test, so the same suite runs on both backends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_server::Config;
use keel_server::storage::Location;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub agent: ureq::Agent,
    pub db: Location,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    fresh: Option<TestDb>,
}

/// A database of its own for one test, gone when dropped.
pub struct TestDb {
    pub at: Location,
    _dir: Option<tempfile::TempDir>,
    /// On PostgreSQL: the server's URL and the database made on it.
    made: Option<(String, String)>,
}

impl TestDb {
    /// On the PostgreSQL server of `KEEL_TEST_PG` when it is set, else a SQLite file.
    pub fn fresh() -> TestDb {
        match std::env::var("KEEL_TEST_PG") {
            Ok(server) if !server.is_empty() => TestDb::on_postgres(&server),
            _ => {
                let dir = tempfile::tempdir().unwrap();
                TestDb {
                    at: Location::Sqlite(dir.path().join("keel.db")),
                    _dir: Some(dir),
                    made: None,
                }
            }
        }
    }

    /// A new database on the PostgreSQL server at `server`.
    pub fn on_postgres(server: &str) -> TestDb {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "keel_test_{}_{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        block_on(async {
            let mut conn = sqlx::PgConnection::connect(server).await.unwrap();
            let create = format!("CREATE DATABASE {name}");
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await
                .unwrap();
        });
        TestDb {
            at: Location::Postgres(keel_server::storage::postgres::database_url(server, &name)),
            _dir: None,
            made: Some((server.to_owned(), name)),
        }
    }

    /// The URL of a PostgreSQL database.
    pub fn url(&self) -> &str {
        match &self.at {
            Location::Postgres(url) => url,
            Location::Sqlite(_) => panic!("a SQLite database"),
        }
    }
}

/// A PostgreSQL server for tests that need one whatever the suite runs on: that of
/// `KEEL_TEST_PG`, else one of its own (`scripts/pg-test-cluster.sh`, torn down when dropped).
/// `None`, with a note, when `KEEL_SKIP_POSTGRES=1`.
pub struct PgServer {
    pub url: String,
    own: Option<std::path::PathBuf>,
}

impl PgServer {
    pub fn up() -> Option<PgServer> {
        if std::env::var("KEEL_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
            eprintln!("KEEL_SKIP_POSTGRES=1: PostgreSQL test skipped");
            crate::webdriver::note_skipped();
            return None;
        }
        if let Ok(url) = std::env::var("KEEL_TEST_PG")
            && !url.is_empty()
        {
            return Some(PgServer { url, own: None });
        }
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keel-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let out = std::process::Command::new(pg_script())
            .arg("up")
            .arg(&dir)
            .output()
            .unwrap();
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
        Some(PgServer {
            url,
            own: Some(dir),
        })
    }

    /// A new database on it.
    pub fn fresh(&self) -> TestDb {
        TestDb::on_postgres(&self.url)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = self.own.take() {
            let _ = std::process::Command::new(pg_script())
                .arg("down")
                .arg(&dir)
                .status();
        }
    }
}

fn pg_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-test-cluster.sh")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = self.made.take() {
            block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        }
    }
}

pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    /// Status, content type and body of a GET (bodies up to 200 MB).
    pub fn fetch(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut resp = self.agent.get(&self.url(path)).call().unwrap();
        let kind = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp
            .body_mut()
            .with_config()
            .limit(200 << 20)
            .read_to_vec()
            .unwrap();
        (resp.status().as_u16(), kind, body)
    }

    pub fn spawn() -> TestApp {
        TestApp::on_temp(|_| {})
    }

    /// A server over a fresh database, with config tweaks.
    pub fn on_temp(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let fresh = TestDb::fresh();
        let mut app = TestApp::on(&fresh.at, tweak);
        app.fresh = Some(fresh);
        app
    }

    /// A server over an existing database (to test restarts), with config tweaks.
    pub fn on(db: impl Into<Location>, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let db = db.into();
        let mut config = Config::new(db.clone(), TOKEN.into());
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                keel_server::serve(config, listener, token).await.unwrap();
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        TestApp {
            addr,
            agent,
            db,
            shutdown,
            thread: Some(thread),
            fresh: None,
        }
    }

    /// Stops the server and waits until it has let go of the database, which it hands over.
    pub fn stop(mut self) -> Option<TestDb> {
        self.halt();
        self.fresh.take()
    }

    fn halt(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str) -> Reply {
        let resp = self.agent.get(&self.url(path)).call().unwrap();
        reply(resp)
    }

    pub fn get_with_token(&self, path: &str) -> Reply {
        let req = self
            .agent
            .get(&self.url(path))
            .header("Authorization", &format!("Bearer {TOKEN}"));
        reply(req.call().unwrap())
    }

    /// POST raw bytes as JSON with an optional bearer token.
    pub fn post_raw(&self, path: &str, body: &[u8], token: Option<&str>) -> Reply {
        self.send_raw(self.agent.post(&self.url(path)), body, token)
    }

    /// PUT raw bytes as JSON with an optional bearer token.
    pub fn put_raw(&self, path: &str, body: &[u8], token: Option<&str>) -> Reply {
        self.send_raw(self.agent.put(&self.url(path)), body, token)
    }

    fn send_raw(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &[u8],
        token: Option<&str>,
    ) -> Reply {
        let mut req = req.content_type("application/json");
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        reply(req.send(body).unwrap())
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.put_raw(path, body.to_string().as_bytes(), Some(TOKEN))
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, body.to_string().as_bytes(), Some(TOKEN))
    }

    pub fn create_run(&self, name: &str, layers: u32) -> i64 {
        let r = self.post(
            "/api/v1/runs",
            &json!({"name": name, "layers": layers, "config": {"lr": 0.01}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_i64().unwrap()
    }

    pub fn ingest(&self, run: i64, steps: Value) -> Reply {
        self.post(
            &format!("/api/v1/runs/{run}/steps"),
            &json!({ "steps": steps }),
        )
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.halt();
    }
}

fn reply(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, body }
}

/// A step record with a loss and a layer vector `hidden_var` of `layers` values.
pub fn step(step: u64, loss: Value, layers: u32) -> Value {
    let var: Vec<Value> = (0..layers)
        .map(|l| json!(1.0 + l as f64 * 0.1 + step as f64 * 0.001))
        .collect();
    json!({"step": step, "time": 1764300000.0 + step as f64, "tokens": step * 1024,
           "scalars": {"loss": loss, "lr": 0.01},
           "layers": {"hidden_var": var}})
}

/// A run of 3,000 steps whose `hidden_var` is 1 everywhere but 1000 at step 1501 in layer 0:
/// any bucket holding that step has max 1000 and a mean far below it.
pub fn spiky_run(app: &TestApp) -> i64 {
    let id = app.create_run("spiky", 4);
    let batch: Vec<Value> = (0..3000u64)
        .map(|s| {
            let spike = if s == 1501 { 1000.0 } else { 1.0 };
            json!({"step": s, "scalars": {"loss": 2.0},
                   "layers": {"hidden_var": [spike, 1.0, 1.0, 1.0]}})
        })
        .collect();
    assert_eq!(app.ingest(id, json!(batch)).status, 200);
    id
}
