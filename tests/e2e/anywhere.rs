//! The `keel` binary on its own: copied into an empty folder, with that folder as its working
//! directory and its `HOME`, and nothing of the environment but `PATH`, it runs `keel demo`
//! with styled pages, a streaming run, charts with text and built-in grids to launch — all
//! from what is inside it. And a demo whose trainer cannot start says so at once and exits.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TOKEN, wait_for};

/// A copy of the binary in `dir/bin`, far from the source tree.
fn copied_keel(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("keel");
    std::fs::copy(env!("CARGO_BIN_EXE_keel"), &exe).unwrap();
    exe
}

/// `keel <args>` run from `dir` with nothing of this process's environment but `PATH`.
fn keel_in(exe: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("CANDLE_NUM_THREADS", "1")
        .stdin(Stdio::null());
    cmd
}

/// A running `keel demo`: its URL (from the first line it prints) and its stderr, collected.
struct Demo {
    child: Child,
    url: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Demo {
    fn start(mut cmd: Command) -> Demo {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("keel demo's first line names its URL: {first:?}"))
            .to_owned();
        let mut rest = String::new();
        out.read_line(&mut rest).unwrap();
        assert!(
            !rest.contains(TOKEN),
            "a token the user gave is not printed: {rest}"
        );
        // Keep draining stdout so the demo never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Demo { child, url, stderr }
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut resp = agent.get(&format!("{}{path}", self.url)).call().unwrap();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.body_mut().read_to_vec().unwrap();
        (resp.status().as_u16(), kind, body)
    }

    fn json(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path);
        assert_eq!(status, 200, "{path}");
        serde_json::from_slice(&body).unwrap()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, and the exit status once it has stopped (at most 30 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keel demo did not stop:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pixels of text: the charts' text colour (40, 44, 52) blended at least half over the white
/// paper, as anti-aliased glyphs are. Nothing else is drawn in it (grid lines are lighter),
/// so a chart drawn without a font has none.
fn text_pixels(png_bytes: &[u8]) -> usize {
    const TEXT: [f64; 3] = [40.0, 44.0, 52.0];
    let mut reader = png::Decoder::new(png_bytes).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf[..info.buffer_size()]
        .chunks(3)
        .filter(|p| {
            // How much ink over paper each channel says; one amount for all three on text.
            let t: Vec<f64> = (0..3)
                .map(|c| (255.0 - f64::from(p[c])) / (255.0 - TEXT[c]))
                .collect();
            let (lo, hi) = (t[0].min(t[1]).min(t[2]), t[0].max(t[1]).max(t[2]));
            lo >= 0.5 && hi - lo <= 0.1
        })
        .count()
}

#[test]
fn a_copied_binary_runs_the_demo_with_styled_pages_charts_with_text_and_grids_to_launch() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copied_keel(dir.path());
    let mut cmd = keel_in(
        &exe,
        dir.path(),
        &["demo", "--addr", "127.0.0.1:0", "--steps", "400"],
    );
    cmd.env("KEEL_TOKEN", TOKEN);
    let mut demo = Demo::start(cmd);

    // The page and its styles and scripts, from inside the binary.
    let (status, _, page) = demo.get("/");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/static/keel.css"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, kind) in [("keel.css", "text/css"), ("runs.js", "text/javascript")] {
        let (status, got, body) = demo.get(&format!("/static/{file}"));
        assert_eq!(status, 200, "/static/{file}");
        assert!(got.starts_with(kind), "/static/{file} is {got}");
        assert_eq!(body, std::fs::read(root.join("static").join(file)).unwrap());
    }

    // The built-in config's run streams.
    let mut run = Value::Null;
    wait_for(120, "the demo run to stream steps", || {
        let runs = demo.json("/api/v1/runs");
        run = runs
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "demo"))
            .cloned()
            .unwrap_or(Value::Null);
        run["last_step"].as_u64().is_some_and(|s| s >= 5)
    });
    let id = run["id"].as_i64().unwrap();
    let (status, _, _) = demo.get(&format!("/runs/{id}"));
    assert_eq!(status, 200);

    // A chart drawn with the built-in font: its labels are there (no font, no text pixels).
    let (status, kind, png) = demo.get(&format!("/api/v1/runs/{id}/layers/hidden_var.png"));
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    let text = text_pixels(&png);
    assert!(text > 600, "only {text} pixels of text in the heatmap");

    // A built-in grid launches, with the token from the environment, and trains.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let grids = demo.json("/api/v1/grids");
    let names: Vec<&str> = grids
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["mup-transfer", "stability", "yulan-ladder"],
        "{grids}"
    );
    let mut resp = agent
        .post(&format!("{}/api/v1/launches", demo.url))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(json!({"grid": "stability", "steps": 3}))
        .unwrap();
    let launch: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{launch}");
    let mut last = Value::Null;
    wait_for(180, "the launched variants to finish", || {
        last = demo.json(&format!("/api/v1/launches/{}", launch["id"]));
        last["active"] == false
    });
    for v in last["variants"].as_array().unwrap() {
        assert_eq!(v["state"], "finished", "{last}");
    }

    let status = demo.terminate();
    assert!(status.success(), "{status}:\n{}", demo.stderr());
    // Nothing was read from, or left beside, a source tree: the folder holds what the demo
    // made.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            ["bin", "checkpoints"].contains(&name.as_str()) || name.starts_with("keel-demo.db"),
            "the demo left {name} behind"
        );
    }
}

#[test]
fn a_demo_whose_trainer_cannot_start_says_why_at_once_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copied_keel(dir.path());
    let args = [
        "demo",
        "--addr",
        "127.0.0.1:0",
        "--config",
        "./missing.toml",
    ];
    let mut demo = Demo::start(keel_in(&exe, dir.path(), &args));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the demo is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    wait_for(5, "stderr to be read", || demo.stderr().contains("Error:"));
    let err = demo.stderr();
    assert!(err.contains("the demo's trainer failed"), "{err}");
    assert!(err.contains("reading config ./missing.toml"), "{err}");

    // With --keep-serving the server stays, and the runs page says what happened.
    let dir = tempfile::tempdir().unwrap();
    let exe = copied_keel(dir.path());
    let mut keep = args.to_vec();
    keep.push("--keep-serving");
    let mut demo = Demo::start(keel_in(&exe, dir.path(), &keep));
    wait_for(20, "the failure on stderr", || {
        demo.stderr().contains("reading config ./missing.toml")
    });
    let (status, _, page) = demo.get("/");
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("class=\"notice\""), "{page}");
    assert!(page.contains("trainer failed"), "{page}");
    assert!(page.contains("reading config ./missing.toml"), "{page}");
    let status = demo.terminate();
    assert!(!status.success(), "a failed demo still exits non-zero");
}
