//! `keel import tensorboard`: event files written by the real `tensorboard` writer (PyTorch's
//! `SummaryWriter`, in the `KEEL_PYTHON` interpreter) imported by the real binary into a real
//! server, read back through the HTTP API; imported again without adding anything; and
//! followed while a writer adds steps, until Ctrl-C.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{Server, TOKEN, wait_for};
use crate::python::{python, script};

/// Writes steps `start..stop` of a small run into the log directory given first: scalars,
/// per-layer scalars for 4 layers in two spellings, a new-style and a double-precision
/// scalar, a NaN loss at step 5, and a histogram.
const WRITER: &str = r#"
import sys
import numpy as np
from torch.utils.tensorboard import SummaryWriter

logdir, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = SummaryWriter(logdir)
for step in range(start, stop):
    w.add_scalar("loss", float("nan") if step == 5 else 4.0 / (step + 1), step)
    w.add_scalar("lr", 0.001 * (step + 1), step)
    for i in range(4):
        w.add_scalar(f"layers/{i}/hidden_var", 1.0 + i + step / 10, step)
        w.add_scalar(f"layer_{i}/grad_norm", 0.1 * (i + 1) + step / 100, step)
    w.add_scalar("eval/acc", 0.5 + step / 100, step, new_style=True)
    w.add_scalar("throughput", 1234.5678 + step, step, new_style=True, double_precision=True)
    w.add_histogram("weights", np.arange(10.0) + step, step)
w.close()
"#;

/// What [`WRITER`] logs, as the event file holds it: float32 but for `throughput`.
fn expected(series: &str, step: u64, layer: u64) -> f64 {
    let (s, i) = (step as f64, layer as f64);
    let f32 = |v: f64| f64::from(v as f32);
    match series {
        "loss" if step == 5 => f64::NAN,
        "loss" => f32(4.0 / (s + 1.0)),
        "lr" => f32(0.001 * (s + 1.0)),
        "hidden_var" => f32(1.0 + i + s / 10.0),
        "grad_norm" => f32(0.1 * (i + 1.0) + s / 100.0),
        "eval/acc" => f32(0.5 + s / 100.0),
        "throughput" => 1234.5678 + s,
        other => panic!("nothing logs {other}"),
    }
}

/// Runs [`WRITER`] with the interpreter of the PyTorch tests.
struct Writer {
    python: PathBuf,
    url: String,
    dir: PathBuf,
}

impl Writer {
    fn new(python: PathBuf, server: &Server, dir: &Path) -> Writer {
        std::fs::write(dir.join("write_tb.py"), WRITER).unwrap();
        let (url, dir) = (server.url(), dir.to_owned());
        Writer { python, url, dir }
    }

    fn steps(&self, logdir: &Path, steps: Range<u64>) {
        let (start, stop) = (steps.start.to_string(), steps.end.to_string());
        let args = ["write_tb.py", logdir.to_str().unwrap(), &start, &stop];
        let out = script(&self.python, &self.url, &self.dir, &args).output();
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn import(server: &Server, logdir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["import", "tensorboard"])
        .arg(logdir)
        .args(["--server", &server.url(), "--token", TOKEN])
        .args(extra)
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_SERVER");
    cmd
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keel import failed:\n{stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn runs(server: &Server) -> Vec<Value> {
    server.get("/api/v1/runs").as_array().unwrap().clone()
}

fn run_named(server: &Server, name: &str) -> Option<Value> {
    runs(server).into_iter().find(|r| r["name"] == name)
}

/// A list of names, sorted.
fn sorted(names: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort_unstable();
    names
}

fn metric(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        v => v.as_f64().unwrap_or_else(|| panic!("{v} is not a metric")),
    }
}

/// Checks a scalar's value at every stored step against [`expected`].
fn assert_scalar(server: &Server, run: i64, key: &str, steps: u64) {
    let s = server.get(&format!("/api/v1/runs/{run}/scalars/{key}?points=100000"));
    let stored: Vec<u64> = s["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(stored, (0..steps).collect::<Vec<_>>(), "{key}");
    for (step, v) in stored.iter().zip(s["last"].as_array().unwrap()) {
        let want = expected(key, *step, 0);
        match want.is_nan() {
            true => assert_eq!(v, "NaN", "{key} at step {step}"),
            false => assert_eq!(metric(v), want, "{key} at step {step}"),
        }
    }
}

/// Checks a layer statistic: 4 layers, every value as [`expected`].
fn assert_layers(server: &Server, run: i64, stat: &str, steps: u64) {
    let m = server.get(&format!("/api/v1/runs/{run}/layers/{stat}?columns=100000"));
    assert_eq!(m["layers"], 4, "{stat}");
    let stored = m["step"].as_array().unwrap();
    assert_eq!(stored.len() as u64, steps, "{stat}");
    for (step, row) in stored.iter().zip(m["mean"].as_array().unwrap()) {
        let step = step.as_u64().unwrap();
        let row: Vec<f64> = row.as_array().unwrap().iter().map(metric).collect();
        let want: Vec<f64> = (0..4).map(|i| expected(stat, step, i)).collect();
        assert_eq!(row, want, "{stat} at step {step}");
    }
}

#[test]
fn tensorboard_logs_import_as_one_run_per_directory_and_a_second_import_adds_nothing() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let logdir = dir.path().join("tb");
    let writer = Writer::new(python, &server, dir.path());
    writer.steps(&logdir.join("alpha"), 0..12);
    writer.steps(&logdir.join("beta/seed1"), 0..3);

    let out = succeeded(&import(&server, &logdir, &[]).output().unwrap());
    assert!(out.starts_with("imported 2 runs (2 new) from "), "{out}");
    assert!(
        out.contains(": 15 steps (15 new, 0 already there)"),
        "{out}"
    );
    assert!(
        out.contains("left out: 15 values that are not scalars"),
        "{out}"
    );

    let names: Vec<Value> = runs(&server).iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, ["beta/seed1", "alpha"]);
    let alpha = run_named(&server, "alpha").unwrap();
    let id = alpha["id"].as_i64().unwrap();
    assert_eq!(
        (alpha["layers"].as_u64(), alpha["last_step"].as_u64()),
        (Some(4), Some(11))
    );
    let detail = server.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(detail["steps"], 12);
    assert_eq!(detail["tags"], serde_json::json!(["tensorboard"]));
    let scalars = ["eval/acc", "loss", "lr", "throughput", "time"];
    assert_eq!(sorted(&detail["scalars"]), scalars, "no `weights`");
    assert_eq!(sorted(&detail["layer_stats"]), ["grad_norm", "hidden_var"]);

    for key in ["loss", "lr", "eval/acc", "throughput"] {
        assert_scalar(&server, id, key, 12);
    }
    for stat in ["hidden_var", "grad_norm"] {
        assert_layers(&server, id, stat, 12);
    }
    // The events' wall times, in order.
    let time = server.get(&format!("/api/v1/runs/{id}/scalars/time?points=100000"));
    let times: Vec<f64> = time["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(metric)
        .collect();
    assert!(times[0] > 1.7e9 && times.is_sorted(), "{times:?}");

    let again = succeeded(&import(&server, &logdir, &[]).output().unwrap());
    assert!(
        again.starts_with("imported 2 runs (0 new) from "),
        "{again}"
    );
    assert!(
        again.contains(": 15 steps (0 new, 15 already there)"),
        "{again}"
    );
    assert_eq!(runs(&server).len(), 2);
    assert_eq!(server.get(&format!("/api/v1/runs/{id}"))["steps"], 12);
}

/// The importer, killed if a test fails before it ends.
struct Importer(Option<Child>);

impl Drop for Importer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_followed_log_directory_streams_steps_as_they_are_written_until_ctrl_c() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let logdir = dir.path().join("live");
    let writer = Writer::new(python, &server, dir.path());
    writer.steps(&logdir, 0..4);

    let child = import(&server, &logdir, &["--follow", "--poll-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut importer = Importer(Some(child));
    let last_step =
        |server: &Server| run_named(server, "live").and_then(|r| r["last_step"].as_u64());
    // The last step goes once a read brings nothing new.
    wait_for(60, "steps 0 to 3", || last_step(&server) == Some(3));

    // A second writer: a new event file in the same directory.
    writer.steps(&logdir, 4..8);
    wait_for(60, "steps 4 to 7", || last_step(&server) == Some(7));
    let run = run_named(&server, "live").unwrap();
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["layers"], 4);
    assert_eq!(server.get(&format!("/api/v1/runs/{id}"))["steps"], 8);
    assert_scalar(&server, id, "loss", 8);
    assert_layers(&server, id, "hidden_var", 8);

    let child = importer.0.take().unwrap();
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(interrupted.unwrap().success());
    let out = succeeded(&child.wait_with_output().unwrap());
    assert!(out.starts_with("imported 1 run (1 new) from "), "{out}");
    assert!(out.contains(": 8 steps (8 new, 0 already there)"), "{out}");
    assert_eq!(runs(&server).len(), 1);
}
