//! PyTorch runs steered by keel: the Python package (`python/`) against a real server, with
//! real PyTorch on the CPU. The interpreter is `KEEL_PYTHON` (`.ci/run` makes a virtualenv
//! with torch, transformers, lightning and tensorboard: `scripts/python-env.sh`);
//! `KEEL_SKIP_PYTHON=1` skips these tests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{
    Process, Server, TOKEN, assert_no_steps_while_paused, assert_summaries_exact, free_addr,
    steps_of, wait_for,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with torch, or None when these tests are skipped.
pub fn python() -> Option<PathBuf> {
    if std::env::var("KEEL_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("KEEL_SKIP_PYTHON=1: PyTorch test skipped");
        crate::webdriver::note_skipped();
        return None;
    }
    let python = std::env::var_os("KEEL_PYTHON").map(PathBuf::from).expect(
        "the PyTorch tests need KEEL_PYTHON, an interpreter with torch \
         (`scripts/python-env.sh` makes one and prints it; KEEL_SKIP_PYTHON=1 skips them)",
    );
    Some(python)
}

/// `python script args…` with the server's address and token in its environment.
pub fn script(python: &Path, url: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(args)
        .current_dir(dir)
        .env("KEEL_SERVER", url)
        .env("KEEL_TOKEN", TOKEN)
        .env("PYTHONPATH", root().join("python"))
        .env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1");
    cmd
}

fn command(server: &Server, run: i64, body: Value) -> i64 {
    let c = server.post(&format!("/api/v1/runs/{run}/commands"), &body);
    c["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("command refused: {c}"))
}

/// Waits for the command's outcome; its record.
fn outcome(server: &Server, run: i64, id: i64) -> Value {
    let mut record = Value::Null;
    wait_for(60, &format!("command {id}'s outcome"), || {
        let all = server.get(&format!("/api/v1/runs/{run}/commands"));
        record = all
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap();
        matches!(record["status"].as_str(), Some("applied" | "rejected"))
    });
    record
}

fn applied(server: &Server, run: i64, id: i64) -> u64 {
    let r = outcome(server, run, id);
    assert_eq!(r["status"], "applied", "{r}");
    r["applied_step"].as_u64().unwrap()
}

/// The steps and last values of a scalar on the live history, one per step.
fn series(server: &Server, run: i64, key: &str) -> Vec<(u64, Value)> {
    let s = server.get(&format!("/api/v1/runs/{run}/scalars/{key}?points=100000"));
    let steps = s["step"].as_array().unwrap();
    let last = s["last"].as_array().unwrap();
    steps
        .iter()
        .zip(last)
        .map(|(s, v)| (s.as_u64().unwrap(), v.clone()))
        .collect()
}

fn at(series: &[(u64, Value)], step: u64) -> f64 {
    let v = series
        .iter()
        .find(|(s, _)| *s == step)
        .unwrap_or_else(|| panic!("no value at step {step}"));
    v.1.as_f64().unwrap()
}

fn last_step(server: &Server, run: i64) -> u64 {
    server.get(&format!("/api/v1/runs/{run}"))["last_step"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the run exists and its live history is past `step`.
fn wait_first_steps(server: &Server, run: i64, step: u64) {
    wait_for(180, "the run's first steps", || {
        server
            .get("/api/v1/runs")
            .as_array()
            .is_some_and(|r| !r.is_empty())
            && last_step(server, run) > step
    });
}

fn wait_past(server: &Server, run: i64, step: u64) {
    wait_for(120, &format!("step {step}"), || {
        last_step(server, run) > step
    });
}

/// A training process, killed if the test fails before it ends. Its output is read as it
/// comes (a full pipe would stall a chatty trainer, such as HF's, mid-run).
struct Trainer {
    child: Option<Child>,
    out: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Trainer {
    fn spawn(mut cmd: Command) -> Trainer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = vec![
            drain(Box::new(child.stdout.take().unwrap())),
            drain(Box::new(child.stderr.take().unwrap())),
        ];
        Trainer {
            child: Some(child),
            out,
        }
    }

    fn wait(mut self) -> std::process::Output {
        let status = self.child.take().unwrap().wait().unwrap();
        let mut out = std::mem::take(&mut self.out)
            .into_iter()
            .map(|t| t.join().unwrap());
        std::process::Output {
            status,
            stdout: out.next().unwrap(),
            stderr: out.next().unwrap(),
        }
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small GPT in plain PyTorch (examples/pytorch_gpt.py) with `watch` and `Control`,
/// steered through keel's HTTP API as the browser does: pause, set_lr, anneal, a data-mix
/// switch, a rewind, a server restart mid-run, and a stop.
#[test]
fn a_pytorch_run_is_paused_retuned_annealed_remixed_rewound_and_stopped_from_keel() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let mut server = Server::start(&db, "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let example = root().join("examples/pytorch_gpt.py");
    let child = script(
        &python,
        &server.url(),
        dir.path(),
        &[
            example.to_str().unwrap(),
            "--steps",
            "100000",
            "--delay",
            "0.01",
            "--checkpoint-every",
            "25",
            "--checkpoints",
            "ck",
        ],
    );
    let trainer = Trainer::spawn(child);
    let run = 1;
    wait_first_steps(&server, run, 30);
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["layers"], 4);
    for stat in [
        "hidden_var",
        "hidden_rms",
        "act_absmax",
        "grad_norm",
        "param_norm",
        "update_ratio",
        "norm_gain",
    ] {
        assert!(
            detail["layer_stats"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == stat),
            "{stat} missing: {detail}"
        );
    }

    // Pause: it stops stepping; resume: it goes on.
    let pause = command(&server, run, json!({"kind": "pause"}));
    applied(&server, run, pause);
    wait_for(30, "the paused status", || {
        server.get(&format!("/api/v1/runs/{run}"))["status"] == "paused"
    });
    assert_no_steps_while_paused(&server, run);
    let resume = command(&server, run, json!({"kind": "resume"}));
    let resumed = applied(&server, run, resume);
    wait_past(&server, run, resumed + 5);
    assert_eq!(
        server.get(&format!("/api/v1/runs/{run}"))["status"],
        "running"
    );

    // set_lr: the `lr` series changes at the applied step.
    let set = command(&server, run, json!({"kind": "set_lr", "lr": 0.001}));
    let n = applied(&server, run, set);
    wait_past(&server, run, n + 2);
    let lr = series(&server, run, "lr");
    assert!((at(&lr, n - 1) - 0.003).abs() < 1e-9, "{}", at(&lr, n - 1));
    assert!((at(&lr, n) - 0.001).abs() < 1e-9, "{}", at(&lr, n));

    // anneal: keel's linear decay from the current LR, taking over from the scheduler.
    let anneal = command(
        &server,
        run,
        json!({"kind": "anneal", "steps": 40, "final_lr": 0.0001, "shape": "linear"}),
    );
    let m = applied(&server, run, anneal);
    wait_past(&server, run, m + 42);
    let lr = series(&server, run, "lr");
    assert!((at(&lr, m) - 0.001).abs() < 1e-9);
    assert!(
        (at(&lr, m + 20) - 0.00055).abs() < 1e-9,
        "{}",
        at(&lr, m + 20)
    );
    assert!((at(&lr, m + 41) - 0.0001).abs() < 1e-9);
    // An anneal upwards is the trainer's to refuse.
    let up = command(
        &server,
        run,
        json!({"kind": "anneal", "steps": 10, "final_lr": 0.5}),
    );
    let r = outcome(&server, run, up);
    assert_eq!(r["status"], "rejected");
    assert!(
        r["message"].as_str().unwrap().contains("only lowers"),
        "{r}"
    );

    // A data-mix switch: only `code` rows from the applied step on.
    let mix = command(
        &server,
        run,
        json!({"kind": "set_data_mix", "weights": {"code": 1.0}}),
    );
    let k = applied(&server, run, mix);
    wait_past(&server, run, k + 10);
    let web = series(&server, run, "loss/web");
    let code = series(&server, run, "loss/code");
    assert!(web.iter().all(|(s, _)| *s < k), "web rows after the switch");
    assert!(web.iter().any(|(s, _)| *s + 1 == k));
    assert!(code.iter().filter(|(s, _)| *s >= k).count() >= 10);
    let unknown = command(
        &server,
        run,
        json!({"kind": "set_data_mix", "weights": {"books": 1.0}}),
    );
    let r = outcome(&server, run, unknown);
    assert_eq!(r["status"], "rejected");
    assert!(r["message"].as_str().unwrap().contains("books"), "{r}");

    // A rewind to the newest checkpoint: the steps after it go to branch 1.
    let rewind = command(&server, run, json!({"kind": "rewind", "skip_batches": 2}));
    let r = outcome(&server, run, rewind);
    assert_eq!(r["status"], "applied", "{r}");
    wait_for(60, "branch 1", || {
        server.get(&format!("/api/v1/runs/{run}"))["branch"] == 1
    });
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    let fork = detail["branches"][1]["fork_step"].as_u64().unwrap();
    assert_eq!((fork + 1) % 25, 0, "rewound to a checkpoint step: {detail}");

    // The server goes away mid-run and comes back on the same file: no step is lost.
    let before = last_step(&server, run);
    server.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    server = Server::start(&db, addr);
    wait_past(&server, run, before + 60);
    let loss = series(&server, run, "loss");
    let steps: Vec<u64> = loss.iter().map(|(s, _)| *s).collect();
    let last = *steps.last().unwrap();
    assert_eq!(
        steps,
        (0..=last).collect::<Vec<_>>(),
        "a gap in the live history"
    );

    // Stop: a checkpoint, then the loop ends and the run is finished.
    let stop = command(&server, run, json!({"kind": "stop"}));
    let r = outcome(&server, run, stop);
    assert_eq!(r["status"], "applied");
    assert!(r["message"].as_str().unwrap().contains("checkpoint"), "{r}");
    let out = trainer.wait();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("finished at step")),
        "{lines:?}"
    );
    wait_for(30, "finished", || {
        server.get(&format!("/api/v1/runs/{run}"))["status"] == "finished"
    });
    server.stop();
}

/// Two ranks under torchrun (gloo on the CPU): rank 0 owns the run, every rank obeys each
/// command at the same step, and a straggler is the hot row of `rank_step_time_s`.
#[test]
fn every_rank_of_a_torchrun_job_obeys_each_command_at_the_same_step() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let ddp = root().join("tests/e2e/py/ddp.py");
    let child = script(
        &python,
        &server.url(),
        dir.path(),
        &[
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            &port,
            ddp.to_str().unwrap(),
        ],
    );
    let trainer = Trainer::spawn(child);
    let run = 1;
    wait_first_steps(&server, run, 20);
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["ranks"], 2, "{detail}");
    assert_eq!(detail["layers"], 3, "{detail}");

    let pause = command(&server, run, json!({"kind": "pause"}));
    applied(&server, run, pause);
    assert_no_steps_while_paused(&server, run);
    let resume = command(&server, run, json!({"kind": "resume"}));
    let resumed = applied(&server, run, resume);
    wait_past(&server, run, resumed + 3);
    let set = command(&server, run, json!({"kind": "set_lr", "multiplier": 0.5}));
    let n = applied(&server, run, set);
    wait_past(&server, run, n + 3);
    let lr = series(&server, run, "lr");
    assert_eq!(at(&lr, n - 1), 0.01);
    assert_eq!(at(&lr, n), 0.005);

    // The straggler (rank 1 sleeps 20 ms in its data loading) is the hot row.
    let m = server.get(&format!(
        "/api/v1/runs/{run}/layers/rank_step_time_s?columns=1"
    ));
    assert_eq!(m["layers"], 2);
    let mean = m["mean"][0].as_array().unwrap();
    let (fast, slow) = (mean[0].as_f64().unwrap(), mean[1].as_f64().unwrap());
    assert!(slow > fast + 0.015, "rank 0 {fast} s, rank 1 {slow} s");

    let stop = command(&server, run, json!({"kind": "stop"}));
    let at_stop = applied(&server, run, stop);
    let out = trainer.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both ranks stopped at the same step, with the same LR and the same parameters.
    let rank = |r: u32| std::fs::read_to_string(dir.path().join(format!("rank-{r}.txt"))).unwrap();
    assert_eq!(rank(0), rank(1));
    let expect = format!("stopped at step {} lr 0.005 ", at_stop - 1);
    assert!(rank(0).starts_with(&expect), "{}", rank(0));
    wait_for(30, "finished", || {
        server.get(&format!("/api/v1/runs/{run}"))["status"] == "finished"
    });
    server.stop();
}

/// A framework's loop under keel's commands: a set_lr, a pause, an anneal, a set_grad_clip,
/// a checkpoint that lands at `checkpoint(step)`, a rewind it refuses with the reason, and a
/// stop.
fn steer_framework(
    script_name: &str,
    lr: f64,
    layers: u64,
    checkpoint: impl Fn(&Path, u64) -> PathBuf,
) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let path = root().join("tests/e2e/py").join(script_name);
    let out_dir = dir.path().join("out");
    let child = script(
        &python,
        &server.url(),
        dir.path(),
        &[path.to_str().unwrap(), out_dir.to_str().unwrap()],
    );
    let trainer = Trainer::spawn(child);
    let run = 1;
    wait_first_steps(&server, run, 10);
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["layers"], layers, "{detail}");
    let stats = detail["layer_stats"].as_array().unwrap();
    assert!(stats.iter().any(|s| s == "hidden_var"), "{detail}");
    assert!(
        detail["scalars"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "loss"),
        "{detail}"
    );

    let set = command(&server, run, json!({"kind": "set_lr", "multiplier": 0.5}));
    let n = applied(&server, run, set);
    wait_past(&server, run, n + 3);
    let series_lr = series(&server, run, "lr");
    assert!((at(&series_lr, n - 1) - lr).abs() < 1e-12);
    assert!(
        (at(&series_lr, n) - lr / 2.0).abs() < 1e-12,
        "{}",
        at(&series_lr, n)
    );
    let loss = series(&server, run, "loss");
    assert!(
        loss.iter().any(|(s, _)| *s == n),
        "loss and lr share their steps"
    );

    let pause = command(&server, run, json!({"kind": "pause"}));
    applied(&server, run, pause);
    assert_no_steps_while_paused(&server, run);
    let resume = command(&server, run, json!({"kind": "resume"}));
    applied(&server, run, resume);

    // keel's decay from the current LR, over the framework's own scheduler.
    let anneal = command(
        &server,
        run,
        json!({"kind": "anneal", "steps": 10, "final_lr": lr / 20.0, "shape": "linear"}),
    );
    let m = applied(&server, run, anneal);
    wait_past(&server, run, m + 11);
    let series_lr = series(&server, run, "lr");
    assert!((at(&series_lr, m) - lr / 2.0).abs() < 1e-12);
    let half = lr / 20.0 + (lr / 2.0 - lr / 20.0) * 0.5;
    assert!(
        (at(&series_lr, m + 5) - half).abs() < 1e-12,
        "{}",
        at(&series_lr, m + 5)
    );
    assert!((at(&series_lr, m + 11) - lr / 20.0).abs() < 1e-12);

    let clip = command(
        &server,
        run,
        json!({"kind": "set_grad_clip", "max_norm": 0.5}),
    );
    applied(&server, run, clip);
    let rewind = command(&server, run, json!({"kind": "rewind"}));
    let r = outcome(&server, run, rewind);
    assert_eq!(r["status"], "rejected");
    assert!(r["message"].as_str().unwrap().contains("on_rewind"), "{r}");
    let mix = command(
        &server,
        run,
        json!({"kind": "set_data_mix", "weights": {"code": 1.0}}),
    );
    applied(&server, run, mix);
    let books = command(
        &server,
        run,
        json!({"kind": "set_data_mix", "weights": {"books": 1.0}}),
    );
    let r = outcome(&server, run, books);
    assert_eq!(r["status"], "rejected");
    assert!(r["message"].as_str().unwrap().contains("books"), "{r}");

    let save = command(&server, run, json!({"kind": "checkpoint"}));
    let c = applied(&server, run, save);
    let ckpt = checkpoint(&out_dir, c - 1);
    wait_for(60, &format!("{}", ckpt.display()), || ckpt.exists());

    let stop = command(&server, run, json!({"kind": "stop"}));
    let s = applied(&server, run, stop);
    let out = trainer.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("trained {s} steps")), "{stdout}");
    wait_for(30, "finished", || {
        server.get(&format!("/api/v1/runs/{run}"))["status"] == "finished"
    });
    server.stop();
}

/// transformers' Trainer on a tiny random GPT-2 with `KeelCallback`.
#[test]
fn an_hf_trainer_run_is_steered_through_keels_callback() {
    steer_framework("hf_trainer.py", 1e-3, 2, |out, step| {
        out.join(format!("checkpoint-{}", step + 1))
    });
}

/// Lightning with `KeelLogger` and `KeelControl`.
#[test]
fn a_lightning_run_is_steered_through_keels_logger_and_callback() {
    steer_framework("lightning_fit.py", 0.01, 3, |out, step| {
        out.join("checkpoints")
            .join(format!("keel-step-{step}.ckpt"))
    });
}

fn sender(python: &Path, url: &str, dir: &Path, mode: &str) -> Trainer {
    let path = root().join("tests/e2e/py/sender.py");
    Trainer::spawn(script(python, url, dir, &[path.to_str().unwrap(), mode]))
}

/// Every step of the run, as (step, loss).
fn losses(server: &Server, run: i64) -> Vec<(u64, Value)> {
    series(server, run, "loss")
}

fn assert_all_100(server: &Server, run: i64) {
    let loss = losses(server, run);
    assert_eq!(loss.len(), 100);
    assert_eq!(loss[7].1, "NaN");
    assert_eq!(loss[3].1.as_f64(), Some(0.25));
    let m = server.get(&format!(
        "/api/v1/runs/{run}/layers/hidden_var?from=99&to=99"
    ));
    assert_eq!(m["max"][0], json!([1.0, 99.0]));
}

/// The server is not there while the run logs: logging does not wait for it, the steps
/// wait on disk, and `finish` sends them all once it is up.
#[test]
fn a_python_run_logs_while_the_server_is_away_and_loses_nothing() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let trainer = sender(&python, &format!("http://{addr}"), dir.path(), "wait");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let server = Server::start(&dir.path().join("keel.db"), addr);
    let out = trainer.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // 100 steps with 10 ms sleeps: logging itself took no time, server or not.
    let took: f64 = stdout.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(took < 2.5, "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    assert_all_100(&server, 1);
    assert_eq!(server.get("/api/v1/runs/1")["status"], "finished");
    assert!(!dir.path().join(".keel").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("spool-")
    }));
    server.stop();
}

/// A run that ended while the server was away leaves its spool; `python -m keel sync`
/// sends it later, and sending it twice changes nothing.
#[test]
fn python_m_keel_sync_sends_what_a_run_left_behind() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let url = format!("http://{addr}");
    let out = sender(&python, &url, dir.path(), "leave").wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("python -m keel sync"), "{stdout}");
    let server = Server::start(&dir.path().join("keel.db"), addr);
    let sync = |expect: &str| {
        let out = script(&python, &url, dir.path(), &["-m", "keel", "sync"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && text.contains(expect), "{text}");
    };
    sync("100 step(s) stored");
    assert_all_100(&server, 1);
    sync("nothing to send");
    assert_eq!(server.get("/api/v1/runs").as_array().unwrap().len(), 1);
    server.stop();
}

/// A step the server refuses is kept in a dead-letter file with the reason, with a
/// warning; the others of its batch are stored.
#[test]
fn a_step_the_server_refuses_goes_to_a_dead_letter_file_and_the_rest_are_stored() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let out = sender(&python, &server.url(), dir.path(), "refused").wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("refused step(s) 7"), "{stderr}");
    let loss = losses(&server, 1);
    assert_eq!(loss.len(), 99);
    assert!(loss.iter().all(|(s, _)| *s != 7));
    let dead = std::fs::read_to_string(dir.path().join(".keel/refused-run-1.jsonl")).unwrap();
    let line: Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(line["record"]["step"], 7);
    assert_eq!(line["record"]["scalars"]["loss"], "NaN");
    assert!(
        line["reason"].as_str().unwrap().contains("`time`"),
        "{line}"
    );
    server.stop();
}

/// The package as `pip install ./python` installs it, under its own tests (records, taps
/// against a direct computation, LR changes, mixtures).
#[test]
fn the_installed_python_package_passes_its_own_tests() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let install = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
        .arg(&site)
        .arg(root().join("python"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(site.join("keel/torch.py").exists());
    let tests = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root().join("python/tests"))
        .env("PYTHONPATH", &site)
        .env("OMP_NUM_THREADS", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&tests.stderr);
    assert!(tests.status.success(), "{report}");
    assert!(!report.contains("Ran 0 tests"), "{report}");
}

/// The server is killed (SIGKILL) mid-run and started again on the same file: the PyTorch
/// run goes on, and every step is stored once, with exact summaries.
#[test]
fn a_pytorch_run_whose_server_is_killed_mid_run_loses_no_step() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let addr = free_addr();
    let server = Process::start(&db, addr);
    let example = root().join("examples/pytorch_gpt.py");
    let trainer = Trainer::spawn(script(
        &python,
        &server.url,
        dir.path(),
        &[
            example.to_str().unwrap(),
            "--steps",
            "300",
            "--d-model",
            "64",
            "--seq",
            "32",
            "--delay",
            "0.01",
        ],
    ));
    let last = |s: &Process| s.get("/api/v1/runs/1")["last_step"].as_u64();
    wait_for(120, "step 60", || {
        has_a_run(&server) && last(&server).is_some_and(|l| l > 60)
    });
    server.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let server = Process::start(&db, addr);
    let out = trainer.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loss = server.get("/api/v1/runs/1/scalars/loss?points=100000");
    let steps = steps_of(&loss);
    assert_eq!(steps, (0..300).collect::<Vec<_>>());
    assert_eq!(server.get("/api/v1/runs/1")["status"], "finished");
    server.kill();
    assert_summaries_exact(&db, 300);
}

fn has_a_run(server: &Process) -> bool {
    server
        .get("/api/v1/runs")
        .as_array()
        .is_some_and(|r| !r.is_empty())
}
