//! A headless Chromium driven through chromedriver with the W3C WebDriver protocol, spoken
//! directly over HTTP: enough to open pages, run scripts, read the browser log and take
//! screenshots.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`);
//! `KEEL_CHROMIUM` and `KEEL_CHROMEDRIVER` name other binaries. Without them the browser tests
//! fail and say what to install, unless `KEEL_SKIP_BROWSER=1` asks to skip them. Browsers run
//! one at a time (a lock), so a 2-core machine is not asked to start several at once.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
    driver: Child,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

fn binary(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    path.exists().then_some(path)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Adds this test's name to the file `KEEL_SKIPPED` names, if any: a test that returns early
/// passes as far as the harness knows, so `.ci/run` counts these lines as skipped instead.
pub fn note_skipped() {
    use std::io::Write;
    let Some(path) = std::env::var_os("KEEL_SKIPPED") else {
        return;
    };
    let name = std::thread::current()
        .name()
        .unwrap_or("a browser test")
        .to_owned();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path);
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{name}");
    }
}

/// chromedriver answers `/status` once it listens; poll it (it is another process, slow to
/// start on a loaded machine). `Err` when it exited instead.
fn wait_until_ready(agent: &ureq::Agent, base: &str, driver: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("exited ({status})"));
        }
        let ready = agent
            .get(&format!("{base}/status"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
            .is_some_and(|v| v["value"]["ready"] == true);
        if ready {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = driver.kill();
    panic!("chromedriver did not become ready within 60 s");
}

impl Browser {
    /// A fresh browser with a window of `width` × `height`, or `None` when
    /// `KEEL_SKIP_BROWSER=1`. Panics with what to install when Chromium is missing.
    pub fn start(width: u32, height: u32) -> Option<Browser> {
        if std::env::var("KEEL_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("KEEL_SKIP_BROWSER=1: browser test skipped");
            note_skipped();
            return None;
        }
        let (Some(chromium), Some(driver)) = (
            binary("KEEL_CHROMIUM", "/usr/bin/chromium"),
            binary("KEEL_CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) else {
            panic!(
                "the browser tests need headless Chromium and chromedriver: \
                 `apt-get install chromium chromium-driver fonts-dejavu-core` \
                 (or point KEEL_CHROMIUM / KEEL_CHROMEDRIVER at them; KEEL_SKIP_BROWSER=1 skips these tests)"
            );
        };
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // The port is free when asked but may be taken before chromedriver binds it: a driver
        // that exits is started again on another.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromedriver");
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .new_agent();
            let base = format!("http://127.0.0.1:{port}");
            if let Err(exited) = wait_until_ready(&agent, &base, &mut child) {
                eprintln!("chromedriver on port {port} {exited}: starting another");
                continue;
            }
            let mut browser = Browser {
                base,
                session: String::new(),
                agent,
                driver: child,
                _profile: tempfile::tempdir().unwrap(),
                _turn: turn,
            };
            browser.session = browser.new_session(&chromium, width, height);
            return Some(browser);
        }
        panic!("chromedriver exited three times before it listened");
    }

    fn new_session(&self, chromium: &std::path::Path, width: u32, height: u32) -> String {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", self._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = self.call("POST", "/session", Some(caps));
        v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned()
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if let Some(err) = v["value"].get("error") {
            panic!("{method} {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// On the open login page: types `token` into the form and submits it.
    pub fn submit_login(&self, token: &str, within: Duration) {
        self.wait_for(
            "the login form",
            within,
            "return document.getElementById('token')",
        );
        self.eval(
            "document.getElementById('token').value = arguments[0]; \
             document.querySelector('#login button[type=submit]').click()",
            json!([token]),
        );
    }

    /// Opens a new tab and returns its handle (the current tab stays current).
    pub fn new_tab(&self) -> String {
        let v = self.session_call("POST", "/window/new", Some(json!({"type": "tab"})));
        v["handle"].as_str().expect("a window handle").to_owned()
    }

    /// The current tab's handle.
    pub fn window(&self) -> String {
        let v = self.session_call("GET", "/window", None);
        v.as_str().expect("a window handle").to_owned()
    }

    pub fn switch_to(&self, handle: &str) {
        self.session_call("POST", "/window", Some(json!({"handle": handle})));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs `script` that calls `arguments[arguments.length - 1](result)` when done.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` until it returns something truthy, and returns that; panics with
    /// `what` after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(script, json!([]));
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {within:?} for {what}; last answer {v}; log: {:?}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The browser's console log since the last call: `(level, message)`.
    pub fn log(&self) -> Vec<(String, String)> {
        let v = self.session_call("POST", "/se/log", Some(json!({"type": "browser"})));
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                        (s("level"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Errors the page reported: uncaught exceptions, `console.error`, failed loads.
    pub fn errors(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, m)| m)
            .collect()
    }

    pub fn resize(&self, width: u32, height: u32) {
        let rect = json!({"width": width, "height": height});
        self.session_call("POST", "/window/rect", Some(rect));
    }

    /// Prefers a dark (or light) colour scheme, as a user's system setting would.
    pub fn prefer_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        let params = json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]});
        let cmd = json!({"cmd": "Emulation.setEmulatedMedia", "params": params});
        self.session_call("POST", "/goog/cdp/execute", Some(cmd));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("a base64 screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(&path).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (what WebDriver sends screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (*d as u32) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
