//! Grids launched by the server: the real `keel serve` binary starts a real `keel train`
//! process per variant, one at a time; cancelling a launch or stopping the server stops them
//! cleanly; and an operator does it all from the runs page in a real browser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TOKEN, config, wait_for};
use crate::webdriver;

/// `keel serve` as a process of its own, launching grids.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    /// Serves a database in `dir` on a free port, launching the grids of `grids` one at a
    /// time; `dir` is its working directory, so the trainers' checkpoints go under it.
    fn start(dir: &Path, grids: &Path) -> Serve {
        Serve::start_on(dir, grids, "127.0.0.1:0")
    }

    /// The same, on `addr` (a restarted server takes back its predecessor's port, which its
    /// trainers keep calling).
    fn start_on(dir: &Path, grids: &Path, addr: &str) -> Serve {
        let log = dir.join("serve.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .current_dir(dir)
            .args(["serve", "--addr", addr, "--db"])
            .arg(crate::harness::db_arg(&dir.join("keel.db")))
            .arg("--grids")
            .arg(grids)
            .args(["--max-trainers", "1"])
            .env("KEEL_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut url = String::new();
        wait_for(30, "keel serve to listen", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .split_whitespace()
                .find(|w| w.starts_with("http://127.0.0.1:"));
            url = found.unwrap_or_default().to_owned();
            !url.is_empty()
        });
        Serve { child, url }
    }

    fn get(&self, path: &str) -> Value {
        let mut resp = ureq::get(&format!("{}{path}", self.url)).call().unwrap();
        resp.body_mut().read_json().unwrap()
    }

    /// POSTs `body` (or nothing) with the token: (status, JSON answer).
    fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        crate::harness::post_with_token(&self.url, path, body)
    }

    fn launch(&self, grid: &str, steps: u64) -> Value {
        let (status, l) = self.post(
            "/api/v1/launches",
            Some(json!({"grid": grid, "steps": steps})),
        );
        assert_eq!(status, 201, "{l}");
        l
    }

    /// Launches `grid` for a million steps and waits until its first variant's run has
    /// stepped a few times: (launch id, launch record).
    fn launch_stepping(&self, grid: &str) -> (Value, Value) {
        let id = self.launch(grid, 1_000_000)["id"].clone();
        let l = self.wait(&id, 60, "the first run to step", |l| {
            let run = &l["variants"][0]["run_id"];
            run.is_i64() && self.get(&format!("/api/v1/runs/{run}"))["steps"].as_u64() >= Some(5)
        });
        (id, l)
    }

    /// Polls launch `id` until `done` holds, for at most `secs` seconds.
    fn wait(&self, id: &Value, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        wait_for(secs, what, || {
            last = self.get(&format!("/api/v1/launches/{id}"));
            done(&last)
        });
        last
    }

    /// SIGTERM, as a Ctrl-C or `docker stop` would send; waits at most 30 s for the exit.
    fn terminate(&mut self) -> ExitStatus {
        signal(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "keel serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    /// A failed test still stops the server the graceful way, so its trainers stop too.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(&self.child, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} failed");
}

/// A grids folder in `dir` with `tiny.toml`: three variants of the smallest proxy.
fn tiny_grids(dir: &Path) -> PathBuf {
    let grids = dir.join("grids");
    std::fs::create_dir(&grids).unwrap();
    let text = format!(
        "base = {:?}\n\
         [variants.a]\n\
         optim.lr = 0.01\n\
         [variants.b]\n\
         stability.qk_norm = true\n\
         [variants.c]\n\
         optim.lr = 0.003\n",
        config("proxy-tiny.toml")
    );
    std::fs::write(grids.join("tiny.toml"), text).unwrap();
    grids
}

fn states(l: &Value) -> Vec<&str> {
    let variants = l["variants"].as_array().unwrap();
    variants
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect()
}

/// The `keel train` processes working in `dir` whose command line mentions `needle`. (Tests
/// run side by side, and two launches of one grid in the same second share a group name.)
fn trainers_mentioning(dir: &Path, needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let cwd = std::fs::read_link(path.join("cwd")).ok()?;
            let cmd = std::fs::read(path.join("cmdline")).ok()?;
            (cwd == dir).then(|| String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .filter(|c| c.contains(" train ") && c.contains(needle))
        .collect()
}

#[test]
fn the_stability_grid_launched_through_the_api_trains_each_variant_in_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let grids = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/ablations");
    let serve = Serve::start(dir.path(), &grids);
    let listed = serve.get("/api/v1/grids");
    let stability = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "stability");
    assert_eq!(
        stability.unwrap()["variants"],
        json!(["stable", "unstable"])
    );

    let l = serve.launch("stability", 3);
    assert_eq!(states(&l), ["running", "queued"], "{l}");
    let group = l["group"].as_str().unwrap().to_owned();
    let l = serve.wait(&l["id"], 120, "the launch to end", |l| l["active"] == false);
    assert_eq!(states(&l), ["finished", "finished"], "{l}");

    // One run per variant, in the launch's group, named as `keel ablate` names them.
    let runs = serve.get("/api/v1/runs");
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for v in l["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let run = runs.iter().find(|r| r["id"] == v["run_id"]).unwrap();
        assert_eq!(run["group"], group.as_str());
        assert_eq!(run["variant"], name);
        assert_eq!(run["name"], format!("{group}/{name}"));
        assert_eq!(run["status"], "finished");
        assert_eq!(
            serve.get(&format!("/api/v1/runs/{}", run["id"]))["steps"],
            3
        );
        let checkpoints = dir.path().join("checkpoints").join(&group).join(name);
        assert!(checkpoints.is_dir(), "{checkpoints:?}");
    }
}

#[test]
fn cancelling_a_launch_stops_its_trainer_at_a_step_boundary_and_drops_the_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &tiny_grids(dir.path()));
    let (id, l) = serve.launch_stepping("tiny");
    let run = l["variants"][0]["run_id"].clone();

    let (status, cancelled) = serve.post(&format!("/api/v1/launches/{id}/cancel"), None);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(states(&cancelled), ["running", "cancelled", "cancelled"]);
    let l = serve.wait(&id, 30, "the trainer to stop", |l| l["active"] == false);
    assert_eq!(states(&l), ["cancelled", "cancelled", "cancelled"], "{l}");
    // SIGTERM is the trainer's clean stop: it checkpoints, reports, and exits 0.
    assert_eq!(l["variants"][0]["exit"], "exit code 0", "{l}");
    let detail = serve.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["status"], "finished");
    let group = l["group"].as_str().unwrap();
    let stopped_at = detail["last_step"].as_u64().unwrap() + 1;
    let checkpoint = dir
        .path()
        .join(format!("checkpoints/{group}/a/step-{stopped_at:08}"));
    assert!(
        checkpoint.is_dir(),
        "no checkpoint at the stop: {checkpoint:?}"
    );
    assert_eq!(serve.get("/api/v1/runs").as_array().unwrap().len(), 1);
    let (status, again) = serve.post(&format!("/api/v1/launches/{id}/cancel"), None);
    assert_eq!(status, 409, "{again}");
}

#[test]
fn a_server_killed_mid_launch_shows_it_again_and_adopts_its_running_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let grids = tiny_grids(dir.path());
    let mut serve = Serve::start(dir.path(), &grids);
    let (id, l) = serve.launch_stepping("tiny");
    let run = l["variants"][0]["run_id"].clone();
    let group = l["group"].as_str().unwrap().to_owned();
    let addr = serve.url.trim_start_matches("http://").to_owned();

    // SIGKILL: no shutdown, no stopping of trainers; the trainer goes on, spilling its steps.
    signal(&serve.child, "-KILL");
    let _ = serve.child.wait();
    std::thread::sleep(Duration::from_millis(500));
    if Path::new("/proc/self/cmdline").exists() {
        assert_eq!(
            trainers_mentioning(dir.path(), &group).len(),
            1,
            "the trainer outlives the server"
        );
    }
    let serve = Serve::start_on(dir.path(), &grids, &addr);
    let launches = serve.get("/api/v1/launches");
    let again = &launches.as_array().unwrap()[0];
    assert_eq!(again["id"], id);
    assert_eq!(states(again), ["running", "queued", "queued"], "{again}");
    assert_eq!(again["variants"][0]["run_id"], run);
    // The adopted trainer reconnects: its steps keep arriving.
    let before = serve.get(&format!("/api/v1/runs/{run}"))["steps"]
        .as_u64()
        .unwrap();
    wait_for(60, "steps after the restart", || {
        serve.get(&format!("/api/v1/runs/{run}"))["steps"]
            .as_u64()
            .unwrap()
            > before + 5
    });
    // And it can be stopped as if the server had started it.
    let (status, cancelled) = serve.post(&format!("/api/v1/launches/{id}/cancel"), None);
    assert_eq!(status, 200, "{cancelled}");
    let l = serve.wait(&id, 60, "the adopted trainer to stop", |l| {
        l["active"] == false
    });
    assert_eq!(states(&l), ["cancelled", "cancelled", "cancelled"], "{l}");
    assert_eq!(
        trainers_mentioning(dir.path(), &group),
        Vec::<String>::new(),
        "orphans"
    );
    assert_eq!(
        serve.get(&format!("/api/v1/runs/{run}"))["status"],
        "finished"
    );
}

#[test]
fn stopping_the_server_stops_the_trainers_it_launched() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &tiny_grids(dir.path()));
    let l = serve.launch("tiny", 1_000_000);
    let l = serve.wait(&l["id"], 60, "the first run to exist", |l| {
        l["variants"][0]["run_id"].is_i64()
    });
    let group = l["group"].as_str().unwrap().to_owned();
    if Path::new("/proc/self/cmdline").exists() {
        assert_eq!(
            trainers_mentioning(dir.path(), &group).len(),
            1,
            "one trainer runs"
        );
    }
    let status = serve.terminate();
    assert!(status.success(), "keel serve exited with {status}");
    assert_eq!(
        trainers_mentioning(dir.path(), &group),
        Vec::<String>::new(),
        "orphans"
    );

    // The trainer reported its end before the server went: its run is finished, not lost.
    let server =
        crate::harness::Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let runs = server.get("/api/v1/runs");
    assert_eq!(runs[0]["group"], group.as_str());
    assert_eq!(runs[0]["status"], "finished");
}

#[test]
fn an_operator_launches_and_cancels_a_grid_from_the_runs_page() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &tiny_grids(dir.path()));
    let Some(b) = webdriver::Browser::start(1280, 1000) else {
        return;
    };
    let patience = Duration::from_secs(60);
    b.goto(&format!("{}/login?next=/", serve.url));
    b.submit_login(TOKEN, patience);
    b.wait_for(
        "the grids",
        patience,
        "const b = document.getElementById('launch-submit'); return b && !b.disabled",
    );
    // The folder's grid is listed beside the built-in ones; pick it.
    let hint = b.eval(
        "const s = document.getElementById('launch-grid'); \
         const names = [...s.options].map((o) => o.value); \
         s.value = 'tiny'; s.dispatchEvent(new Event('change')); \
         return names.join(' ') + ' | ' + document.getElementById('launch-variants').textContent",
        json!([]),
    );
    assert_eq!(
        hint,
        "mup-transfer stability tiny yulan-ladder | Variants: a, b, c"
    );

    b.eval(
        "document.getElementById('launch-steps').value = '5'; \
         document.getElementById('launch-submit').click()",
        json!([]),
    );
    // Every variant shows up, then finishes with a link to its run.
    let finished = "const vs = [...document.querySelectorAll('#launches li[data-variant]')]; \
                    return vs.length === 3 && vs.every((v) => v.dataset.state === 'finished' \
                      && v.querySelector('a[href^=\"/runs/\"]')) \
                    && document.querySelector('#launches a[href^=\"/compare?group=\"]') != null";
    b.wait_for("the launch to finish on the page", patience, finished);
    let launches = serve.get("/api/v1/launches");
    assert_eq!(launches[0]["issued_by"], "browser");
    assert_eq!(states(&launches[0]), ["finished", "finished", "finished"]);
    assert_eq!(launches[0]["steps"], 5);

    // A long launch, cancelled from its button (the confirmation answered yes).
    b.eval(
        "document.getElementById('launch-steps').value = '1000000'; \
         document.getElementById('launch-submit').click()",
        json!([]),
    );
    b.wait_for(
        "the second launch to run",
        patience,
        "const l = document.querySelector('#launches li[data-launch]'); \
         return l && l.querySelector('li[data-state=running] a[href^=\"/runs/\"]') \
           && l.querySelector('button[data-cancel]')",
    );
    b.eval(
        "window.confirm = () => true; \
         document.querySelector('#launches li[data-launch] button[data-cancel]').click()",
        json!([]),
    );
    b.wait_for(
        "every variant to show cancelled",
        patience,
        "const l = document.querySelector('#launches li[data-launch]'); \
         const vs = [...l.querySelectorAll('li[data-variant]')]; \
         return vs.length === 3 && vs.every((v) => v.dataset.state === 'cancelled') \
           && !l.querySelector('button[data-cancel]')",
    );
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}
