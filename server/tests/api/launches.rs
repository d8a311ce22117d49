//! Launching grids: real child processes (shell scripts standing in for trainers, through a
//! test [`Launcher`]), the queue and its limit, run discovery, failures, cancelling, shutdown,
//! and every refusal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_server::launches::{Job, LaunchConfig, Launcher, grids};
use serde_json::{Value, json};

use crate::helpers::{PgServer, Reply, TOKEN, TestApp};
use crate::live::{all_runs_stream, next_named};
use crate::sessions::{csrf_of, get_with_cookie, post_login, session_cookie};

/// Grids for the tests: each line of `<name>.toml` is `variant: shell script`, run by `sh -c`
/// with the job in `GROUP`, `VARIANT`, `STEPS` and `SERVER`.
struct ShellLauncher {
    dir: PathBuf,
}

fn lines(grid: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(grid)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, script) = l.split_once(':').context("a line is `variant: script`")?;
            Ok((name.trim().to_owned(), script.trim().to_owned()))
        })
        .collect()
}

impl ShellLauncher {
    fn file(&self, grid: &str) -> PathBuf {
        self.dir.join(format!("{grid}.toml"))
    }
}

impl Launcher for ShellLauncher {
    fn grids(&self) -> anyhow::Result<Vec<String>> {
        Ok(grids::names(&self.dir)?)
    }

    fn variants(&self, grid: &str) -> anyhow::Result<Vec<String>> {
        Ok(lines(&self.file(grid))?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    fn source(&self) -> String {
        format!("the files of {}", self.dir.display())
    }

    fn command(&self, job: &Job) -> Command {
        let script = lines(&self.file(&job.grid))
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == job.variant)
            .unwrap()
            .1;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd.env("GROUP", &job.group)
            .env("VARIANT", &job.variant)
            .env(
                "STEPS",
                job.steps.map(|s| s.to_string()).unwrap_or_default(),
            )
            .env("SERVER", &job.server);
        cmd
    }
}

/// A server launching from a fresh grids folder holding `grids` (name, text), `max` at a time.
/// The folder also serves the scripts as a scratch directory: `$D` in a grid is its path.
struct Launching {
    app: TestApp,
    dir: tempfile::TempDir,
}

impl Launching {
    fn new(grids: &[(&str, &str)], max: usize) -> Launching {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for (name, text) in grids {
            let text = text.replace("$D", &d);
            std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        }
        let grids = dir.path().to_owned();
        let app = TestApp::on_temp(|c| {
            let mut launch = LaunchConfig::new(Arc::new(ShellLauncher { dir: grids }));
            launch.max_trainers = max;
            launch.stop_grace = Duration::from_secs(1);
            c.launch = Some(launch);
        });
        Launching { app, dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Lets every script waiting on `$D/go` go on.
    fn go(&self) {
        std::fs::write(self.path("go"), "").unwrap();
    }

    fn launch(&self, body: Value) -> Reply {
        self.app.post("/api/v1/launches", &body)
    }

    fn launched(&self, grid: &str) -> Value {
        let r = self.launch(json!({"grid": grid}));
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    fn get(&self, id: &Value) -> Value {
        let r = self.app.get(&format!("/api/v1/launches/{id}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    fn cancel(&self, id: &Value) -> Reply {
        self.app
            .post_raw(&format!("/api/v1/launches/{id}/cancel"), b"", Some(TOKEN))
    }

    /// Polls the launch until `done` holds, failing after 20 s.
    fn wait(&self, id: &Value, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self.get(id);
            if done(&l) {
                return l;
            }
            assert!(Instant::now() < deadline, "waited 20 s for {what}: {l}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn states(l: &Value) -> Vec<&str> {
    l["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect()
}

fn assert_refused(r: &Reply, status: u16, mentions: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let msg = r.body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(mentions),
        "{msg:?} should mention {mentions:?}"
    );
}

const WAIT_FOR_GO: &str = "while [ ! -f $D/go ]; do sleep 0.05; done";

#[test]
fn a_server_without_launching_answers_404_and_shows_no_launch_panel() {
    let app = TestApp::spawn();
    assert_refused(&app.get("/api/v1/grids"), 404, "does not launch");
    assert_refused(&app.get("/api/v1/launches"), 404, "does not launch");
    assert_refused(&app.get("/api/v1/launches/1"), 404, "does not launch");
    let r = app.post("/api/v1/launches", &json!({"grid": "stability"}));
    assert_refused(&r, 404, "does not launch");
    let r = app.post_raw("/api/v1/launches/1/cancel", b"", Some(TOKEN));
    assert_refused(&r, 404, "does not launch");
    let page = app.get("/").body;
    let page = page.as_str().unwrap();
    assert!(!page.contains(r#"id="launch""#), "{page}");
}

#[test]
fn grids_are_listed_with_their_variants_and_a_broken_one_says_why() {
    let s = Launching::new(
        &[
            ("ladder", "b: true\na: true\nc: true"),
            ("broken", "no colon"),
        ],
        1,
    );
    std::fs::write(s.path("notes.md"), "not a grid").unwrap();
    let r = s.app.get("/api/v1/grids");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!([
            {"name": "broken", "variants": [], "error": "a line is `variant: script`"},
            {"name": "ladder", "variants": ["b", "a", "c"], "error": null},
        ])
    );
}

#[test]
fn refused_launches_and_cancels_change_nothing() {
    let s = Launching::new(
        &[
            ("g", "a: touch $D/ran"),
            ("broken", "no colon"),
            ("empty", ""),
        ],
        1,
    );
    let launch = |body: &str| {
        s.app
            .post_raw("/api/v1/launches", body.as_bytes(), Some(TOKEN))
    };
    let unsigned = s
        .app
        .post_raw("/api/v1/launches", br#"{"grid": "g"}"#, None);
    assert_refused(&unsigned, 401, "Bearer");
    let wrong = s
        .app
        .post_raw("/api/v1/launches", br#"{"grid": "g"}"#, Some("nope"));
    assert_refused(&wrong, 401, "token is wrong");
    assert_refused(&launch(r#"{"grid": "g""#), 400, "JSON");
    assert_refused(&launch(r#"{"grid": "g", "steps": 0}"#), 422, "steps");
    assert_refused(&launch(r#"{"grid": "g", "steps": 10000001}"#), 422, "steps");
    assert_refused(&launch(r#"{"grid": "g", "steps": -5}"#), 422, "steps");
    assert_refused(&launch(r#"{"grid": "g", "steps": "many"}"#), 422, "steps");
    assert_refused(&launch(r#"{"grid": "g", "parallel": 4}"#), 422, "parallel");
    assert_refused(&launch(r#"{"steps": 3}"#), 422, "grid");
    for name in ["../g", "g/../g", "/etc/passwd", ".hidden", ""] {
        let body = json!({"grid": name}).to_string();
        assert_refused(&launch(&body), 422, "cannot name a grid");
    }
    assert_refused(
        &launch(r#"{"grid": "missing"}"#),
        404,
        "grid `missing` not found",
    );
    assert_refused(&launch(r#"{"grid": "broken"}"#), 422, "does not load");
    assert_refused(&launch(r#"{"grid": "empty"}"#), 422, "no variants");

    assert_refused(&s.app.get("/api/v1/launches/9"), 404, "launch 9 not found");
    assert_refused(&s.app.get("/api/v1/launches/abc"), 400, "");
    assert_refused(&s.cancel(&json!(9)), 404, "launch 9 not found");
    let r = s.app.post_raw("/api/v1/launches/9/cancel", b"", None);
    assert_refused(&r, 401, "Bearer");

    assert_eq!(s.app.get("/api/v1/launches").body, json!([]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.path("ran").exists(),
        "a refused launch started a process"
    );
}

#[test]
fn variants_run_one_at_a_time_first_come_first_served_across_launches() {
    let grid = format!("a: {WAIT_FOR_GO}\nb: {WAIT_FOR_GO}");
    let s = Launching::new(&[("g", &grid)], 1);
    let first = s.launched("g");
    assert_eq!(states(&first), ["running", "queued"]);
    assert_eq!(first["active"], true);
    assert_eq!(first["issued_by"], "token");
    assert!(first["group"].as_str().unwrap().starts_with("g-"));
    let second = s.launched("g");
    assert_eq!(states(&second), ["queued", "queued"]);
    assert_ne!(first["group"], second["group"], "each launch has its group");
    assert_eq!(s.app.get("/api/v1/launches").body[0]["id"], second["id"]);
    s.go();
    let second = s.wait(&second["id"], "the second launch", |l| l["active"] == false);
    let first = s.get(&first["id"]);
    assert_eq!(states(&first), ["finished", "finished"]);
    assert_eq!(states(&second), ["finished", "finished"]);
    // One at a time, in the order they were queued: each starts once the one before ended.
    let order: Vec<&Value> = [&first, &second]
        .iter()
        .flat_map(|l| l["variants"].as_array().unwrap())
        .collect();
    for pair in order.windows(2) {
        let (ended, started) = (&pair[0]["ended_at"], &pair[1]["started_at"]);
        assert!(started.as_f64() >= ended.as_f64(), "{order:?}");
    }
    assert_eq!(order[0]["exit"], "exit code 0");
}

#[test]
fn two_trainer_slots_run_two_variants_at_once() {
    let grid = format!("a: {WAIT_FOR_GO}\nb: {WAIT_FOR_GO}\nc: {WAIT_FOR_GO}");
    let s = Launching::new(&[("g", &grid)], 2);
    let l = s.launched("g");
    assert_eq!(states(&l), ["running", "running", "queued"]);
    s.go();
    let l = s.wait(&l["id"], "the launch to end", |l| l["active"] == false);
    assert_eq!(states(&l), ["finished", "finished", "finished"]);
}

#[test]
fn a_variant_finds_its_run_and_has_the_token_in_its_environment() {
    let grid = format!(
        "a: [ \"$KEEL_TOKEN\" = {TOKEN} ] && [ \"$VARIANT\" = a ] || exit 9; {WAIT_FOR_GO}"
    );
    let s = Launching::new(&[("g", &grid)], 1);
    let l = s.launched("g");
    assert_eq!(l["variants"][0]["run_id"], Value::Null);
    // What a trainer does first: create its run in the launch's group, as its variant.
    let r = s.app.post(
        "/api/v1/runs",
        &json!({"name": "x", "group": l["group"], "variant": "a", "layers": 1, "config": {}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let run = r.body["id"].clone();
    s.wait(&l["id"], "the run to be found", |l| {
        l["variants"][0]["run_id"] == run
    });
    s.go();
    let l = s.wait(&l["id"], "the launch to end", |l| l["active"] == false);
    assert_eq!(l["variants"][0]["state"], "finished", "{l}");
    assert_eq!(l["variants"][0]["run_id"], run);
}

#[test]
fn a_trainer_that_dies_after_creating_its_run_leaves_the_reason_on_the_run() {
    let grid = format!("a: {WAIT_FOR_GO}; echo 'Error: out of memory' >&2; exit 137");
    let s = Launching::new(&[("g", &grid)], 1);
    let l = s.launched("g");
    let r = s.app.post(
        "/api/v1/runs",
        &json!({"name": "x", "group": l["group"], "variant": "a", "layers": 1, "config": {}}),
    );
    let run = r.body["id"].clone();
    s.wait(&l["id"], "the run to be found", |l| {
        l["variants"][0]["run_id"] == run
    });
    s.go();
    s.wait(&l["id"], "the launch to end", |l| l["active"] == false);
    // The run says it failed, and why, where its page reads it: its status and its events.
    let detail = s.app.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail.body["status"], "failed", "{}", detail.body);
    let events = s.app.get(&format!("/api/v1/runs/{run}/events"));
    let said = events.body.as_array().unwrap().iter().any(|e| {
        e["name"] == "failed"
            && e["message"] == "the trainer exited (exit code 137): Error: out of memory"
    });
    assert!(said, "{}", events.body);
}

#[test]
fn a_failing_variant_keeps_its_exit_code_and_last_stderr_lines_and_the_next_one_runs() {
    let grid = "a: for i in $(seq 1 30); do echo \"line $i\" >&2; done; echo 'no such config' >&2; exit 3\n\
                b: echo fine";
    let s = Launching::new(&[("g", grid)], 1);
    let l = s.launched("g");
    let l = s.wait(&l["id"], "the launch to end", |l| l["active"] == false);
    let a = &l["variants"][0];
    assert_eq!(a["state"], "failed", "{l}");
    assert_eq!(a["exit"], "exit code 3");
    let stderr = a["stderr"].as_array().unwrap();
    assert_eq!(stderr.len(), 20);
    assert_eq!(stderr[0], "line 12");
    assert_eq!(stderr[19], "no such config");
    assert_eq!(l["variants"][1]["state"], "finished");
    assert_eq!(l["variants"][1]["stderr"], json!([]));
}

#[test]
fn cancel_drops_the_queued_variants_and_stops_the_running_one_gracefully() {
    let grid = "a: trap 'touch $D/a-stopped; exit 0' TERM; while :; do sleep 0.05; done\n\
                b: touch $D/b-ran";
    let s = Launching::new(&[("g", grid)], 1);
    let l = s.launched("g");
    std::thread::sleep(Duration::from_millis(300));
    let r = s.cancel(&l["id"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["cancelled"], true);
    assert_eq!(states(&r.body), ["running", "cancelled"]);
    let l = s.wait(&l["id"], "the trainer to stop", |l| l["active"] == false);
    assert_eq!(states(&l), ["cancelled", "cancelled"]);
    assert_eq!(l["variants"][0]["exit"], "exit code 0");
    assert!(s.path("a-stopped").exists(), "the trainer got no SIGTERM");
    assert!(!s.path("b-ran").exists(), "a cancelled variant started");
    assert_refused(&s.cancel(&l["id"]), 409, "has ended");
    assert_eq!(s.get(&l["id"]), l, "a refused cancel changed the launch");
}

#[test]
fn one_variant_is_cancelled_alone_while_the_others_go_on() {
    let grid = "a: trap 'touch $D/a-stopped; exit 0' TERM; while :; do sleep 0.05; done\n\
                b: touch $D/b-ran; while [ ! -e $D/go ]; do sleep 0.05; done\n\
                c: touch $D/c-ran";
    let s = Launching::new(&[("g", grid)], 1);
    let l = s.launched("g");
    let id = &l["id"];
    let cancel = |variant: &str| {
        s.app.post_raw(
            &format!("/api/v1/launches/{id}/variants/{variant}/cancel"),
            b"",
            Some(TOKEN),
        )
    };
    std::thread::sleep(Duration::from_millis(300));
    // A queued variant is cancelled at once and never starts.
    let r = cancel("c");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(states(&r.body), ["running", "queued", "cancelled"]);
    assert_eq!(r.body["variants"][2]["cancelled"], true);
    assert_eq!(r.body["cancelled"], false);
    // The running one stops gracefully, and the next one gets its slot.
    let r = cancel("a");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["variants"][0]["cancelled"], true);
    assert_eq!(cancel("a").status, 200, "asking again changes nothing");
    let l = s.wait(id, "b to start", |l| {
        states(l) == ["cancelled", "running", "cancelled"]
    });
    assert_eq!(l["variants"][0]["exit"], "exit code 0");
    assert!(s.path("a-stopped").exists(), "the trainer got no SIGTERM");
    s.go();
    let l = s.wait(id, "b to finish", |l| l["active"] == false);
    assert_eq!(states(&l), ["cancelled", "finished", "cancelled"]);
    assert!(!s.path("c-ran").exists(), "a cancelled variant started");
    assert_refused(
        &cancel("b"),
        409,
        "variant `b` of launch 1 has ended (finished)",
    );
    assert_refused(&cancel("nosuch"), 404, "has no variant `nosuch`");
    let r = s
        .app
        .post_raw("/api/v1/launches/9/variants/a/cancel", b"", Some(TOKEN));
    assert_refused(&r, 404, "launch 9 not found");
    let r = s.app.post_raw(
        &format!("/api/v1/launches/{id}/variants/a/cancel"),
        b"",
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(s.get(id), l, "a refused cancel changed the launch");
}

#[test]
fn a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let s = Launching::new(&[("g", "a: trap '' TERM; while :; do sleep 0.05; done")], 1);
    let l = s.launched("g");
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert_eq!(s.cancel(&l["id"]).status, 200);
    let l = s.wait(&l["id"], "the kill", |l| l["active"] == false);
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "killed before the grace period"
    );
    assert_eq!(l["variants"][0]["state"], "cancelled");
    assert_eq!(l["variants"][0]["exit"], "killed by signal 9");
}

#[test]
fn stopping_the_server_stops_its_trainers() {
    let grid = "a: trap 'touch $D/stopped; exit 0' TERM; echo $$ > $D/pid; while :; do sleep 0.05; done\n\
                b: touch $D/b-ran";
    let s = Launching::new(&[("g", grid)], 1);
    let l = s.launched("g");
    s.wait(&l["id"], "the trainer to start", |_| s.path("pid").exists());
    std::thread::sleep(Duration::from_millis(100));
    let pid = std::fs::read_to_string(s.path("pid")).unwrap();
    let Launching { app, dir } = s;
    let started = Instant::now();
    app.stop();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown hung");
    assert!(
        dir.path().join("stopped").exists(),
        "the trainer got no SIGTERM"
    );
    assert!(!dir.path().join("b-ran").exists());
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    if Path::new("/proc/self").exists() {
        assert!(!proc.exists(), "the trainer outlived the server");
    }
}

#[test]
fn a_signed_in_page_launches_with_its_csrf_token_and_a_visitor_gets_a_sign_in_link() {
    let s = Launching::new(&[("g", "a: true")], 1);
    let visitor = s.app.get("/").body;
    let visitor = visitor.as_str().unwrap();
    assert!(visitor.contains("launch-signin"), "{visitor}");
    assert!(!visitor.contains("launch-form"));
    assert!(csrf_of(visitor).is_none());

    let login = post_login(&s.app, TOKEN, "/");
    assert_eq!(login.status, 303);
    let (_, cookie) = session_cookie(&login);
    let page = get_with_cookie(&s.app, "/", Some(&cookie)).body;
    assert!(page.contains("launch-form"), "{page}");
    let csrf = csrf_of(&page).expect("a signed-in runs page carries the CSRF token");

    let post = |csrf: Option<&str>| {
        let mut req = s
            .app
            .agent
            .post(&s.app.url("/api/v1/launches"))
            .content_type("application/json")
            .header("Cookie", &cookie);
        if let Some(t) = csrf {
            req = req.header("X-CSRF-Token", t);
        }
        let mut resp = req.send(r#"{"grid": "g", "steps": 5}"#).unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json::<Value>().unwrap())
    };
    let (status, body) = post(None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(s.app.get("/api/v1/launches").body, json!([]));
    let (status, body) = post(Some(&csrf));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["issued_by"], "browser");
    assert_eq!(body["steps"], 5);
}

#[test]
fn the_live_stream_announces_every_change_of_a_launch() {
    let s = Launching::new(&[("g", &format!("a: {WAIT_FOR_GO}"))], 1);
    let rx = all_runs_stream(&s.app);
    let next = |name: &str| next_named(&rx, name);
    // Subscribed once the server has said hello: nothing after it is missed.
    next("hello");
    let l = s.launched("g");
    s.go();
    let mut seen: Vec<String> = Vec::new();
    while seen.last().map(String::as_str) != Some("finished") {
        let e = next("launch");
        assert_eq!(e["type"], "launch");
        assert_eq!(e["launch"]["id"], l["id"]);
        let state = e["launch"]["variants"][0]["state"].as_str().unwrap();
        seen.push(state.to_owned());
    }
    assert_eq!(seen, ["queued", "running", "finished"]);
}

#[test]
fn on_a_shared_database_a_launch_belongs_to_the_server_that_started_it_and_shows_on_all() {
    let Some(pg) = PgServer::up() else { return };
    let db = pg.fresh();
    let dir = tempfile::tempdir().unwrap();
    let wait = WAIT_FOR_GO.replace("$D", &dir.path().display().to_string());
    std::fs::write(
        dir.path().join("wait.toml"),
        format!("x: {wait}\ny: {wait}\n"),
    )
    .unwrap();
    let server = |name: &str| {
        let grids = dir.path().to_owned();
        TestApp::on(&db.at, |c| {
            let mut launch = LaunchConfig::new(Arc::new(ShellLauncher { dir: grids }));
            launch.max_trainers = 2;
            launch.stop_grace = Duration::from_secs(1);
            c.launch = Some(launch);
            c.replica = Some(name.into());
        })
    };
    let (a, b) = (server("a"), server("b"));
    let live_on_b = all_runs_stream(&b);
    next_named(&live_on_b, "hello");
    let on_a = a.post("/api/v1/launches", &json!({"grid": "wait"}));
    assert_eq!(on_a.status, 201, "{}", on_a.body);
    let on_b = b.post("/api/v1/launches", &json!({"grid": "wait"}));
    assert_eq!(on_b.status, 201, "{}", on_b.body);
    let (ia, ib) = (on_a.body["id"].clone(), on_b.body["id"].clone());
    assert_ne!(ia, ib, "the database hands out launch ids");
    assert_ne!(on_a.body["group"], on_b.body["group"]);
    // Each server lists both, newest first, and shows the other's.
    for app in [&a, &b] {
        let listed = app.get("/api/v1/launches");
        let ids: Vec<_> = listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].clone())
            .collect();
        assert_eq!(ids, vec![ib.clone(), ia.clone()], "{}", listed.body);
    }
    assert_eq!(
        b.get(&format!("/api/v1/launches/{ia}")).body["grid"],
        "wait"
    );
    // Any server cancels any launch: B asks A, which runs its trainers, and answers the
    // launch as A wrote it.
    let r = b.post_raw(
        &format!("/api/v1/launches/{ia}/variants/x/cancel"),
        b"",
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["variants"][0]["cancelled"], true, "{}", r.body);
    assert_eq!(r.body["variants"][1]["cancelled"], false, "{}", r.body);
    let r = b.post_raw(
        &format!("/api/v1/launches/{ia}/variants/nosuch/cancel"),
        b"",
        Some(TOKEN),
    );
    assert_refused(&r, 404, "no variant `nosuch`");
    let r = b.post_raw(&format!("/api/v1/launches/{ia}/cancel"), b"", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["cancelled"], true, "{}", r.body);
    // B sees it end as A writes it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = b.get(&format!("/api/v1/launches/{ia}")).body;
        if !l["active"].as_bool().unwrap() {
            assert_eq!(states(&l), vec!["cancelled", "cancelled"], "{l}");
            break;
        }
        assert!(Instant::now() < deadline, "B never saw A's launch end: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // B's live stream told of A's launch from its start to its end.
    let mut told = Vec::new();
    while told
        .last()
        .is_none_or(|s: &String| s != "cancelled cancelled")
    {
        let e = next_named(&live_on_b, "launch");
        if e["launch"]["id"] == ia {
            told.push(states(&e["launch"]).join(" "));
        }
    }
    assert!(told.len() > 1, "{told:?}");
    let r = b.post_raw(&format!("/api/v1/launches/{ia}/cancel"), b"", Some(TOKEN));
    assert_refused(&r, 409, "has ended");
    // A restarted takes back its own launches only: B's stays B's, running.
    drop(a);
    let a = server("a");
    let l = a.get(&format!("/api/v1/launches/{ib}")).body;
    assert_eq!(l["active"], true, "{l}");
    let r = a.post_raw(&format!("/api/v1/launches/{ib}/cancel"), b"", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["cancelled"], true, "{}", r.body);
    // A server that is gone cannot answer: 503, and nothing changes.
    drop(b);
    let r = a.post_raw(&format!("/api/v1/launches/{ib}/cancel"), b"", Some(TOKEN));
    assert_refused(&r, 503, "the server `b` that runs launch");
}
