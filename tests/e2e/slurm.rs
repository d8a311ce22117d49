//! `keel ablate --slurm` on a real one-node SLURM cluster (`scripts/slurm-test-cluster.sh`:
//! Debian's slurm-wlm and munge, installed when missing). `KEEL_SKIP_SLURM=1` skips these.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{Server, wait_for};

const TOKEN: &str = crate::harness::TOKEN;

/// A test cluster, torn down when dropped; one at a time (their trainers share two cores).
struct Cluster {
    dir: PathBuf,
    conf: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    fn up() -> Option<Cluster> {
        if std::env::var("KEEL_SKIP_SLURM").is_ok_and(|v| v == "1") {
            eprintln!("KEEL_SKIP_SLURM=1: SLURM test skipped");
            crate::webdriver::note_skipped();
            return None;
        }
        let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("keel-slurm")
            .tempdir()
            .unwrap()
            .keep();
        let out = Command::new(script()).arg("up").arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "the SLURM test cluster did not come up (KEEL_SKIP_SLURM=1 skips these tests):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Cluster {
            conf: dir.join("slurm.conf").to_string_lossy().into_owned(),
            dir,
            _one: one,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn text(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).status();
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-test-cluster.sh")
}

/// Two variants of the smallest proxy.
fn grid(dir: &Path) -> PathBuf {
    let path = dir.join("pair.toml");
    std::fs::write(
        &path,
        "base = \"proxy-tiny\"\n[variants.a]\noptim.lr = 0.003\n[variants.b]\noptim.lr = 0.01\n",
    )
    .unwrap();
    path
}

fn ablate(cluster: &Cluster, dir: &Path, server: &Server, grid: &Path, extra: &[&str]) -> Command {
    let mut c = cluster.command(env!("CARGO_BIN_EXE_keel"));
    c.current_dir(dir)
        .arg("ablate")
        .arg(grid)
        .args(["--server", &server.url(), "--slurm", "--logs"])
        .arg(dir.join("logs"))
        .args(extra)
        .env("KEEL_TOKEN", TOKEN)
        .env("RUST_BACKTRACE", "0")
        .env("CANDLE_NUM_THREADS", "1");
    c
}

/// A test cluster, a folder and a keel server; `None` when SLURM tests are skipped.
fn setup() -> Option<(Cluster, tempfile::TempDir, Server)> {
    let cluster = Cluster::up()?;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    Some((cluster, dir, server))
}

fn runs(server: &Server) -> Vec<serde_json::Value> {
    server.get("/api/v1/runs").as_array().unwrap().clone()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every variant runs as a job and streams into keel; the token is in no job's script or
/// command line.
#[test]
fn a_grid_submitted_through_slurm_runs_each_variant_as_a_job() {
    let Some((cluster, dir, server)) = setup() else {
        return;
    };
    let out = ablate(
        &cluster,
        dir.path(),
        &server,
        &grid(dir.path()),
        &["--steps", "30"],
    )
    .output()
    .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    for v in ["a", "b"] {
        assert!(log.contains(&format!("{v:<24} job ")), "{log}");
    }
    assert!(log.contains("COMPLETED  exit 0:0"), "{log}");
    let runs = runs(&server);
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r["status"], "finished", "{r}");
        assert_eq!(r["last_step"], 29, "{r}");
    }
    for id in ["1", "2"] {
        let job = cluster.text("scontrol", &["show", "job", "--oneliner", id]);
        assert!(job.contains("JobState=COMPLETED"), "{job}");
        let script = cluster.text("scontrol", &["write", "batch_script", id, "-"]);
        assert!(script.contains(" train --grid "), "{script}");
        assert!(
            !job.contains(TOKEN) && !script.contains(TOKEN),
            "the token shows in job {id}"
        );
    }
    server.stop();
}

/// Ctrl-C cancels the jobs with SIGTERM first: each trainer checkpoints and stops.
#[test]
fn cancelling_slurm_jobs_stops_each_trainer_with_a_checkpoint() {
    let Some((cluster, dir, server)) = setup() else {
        return;
    };
    let mut child = ablate(
        &cluster,
        dir.path(),
        &server,
        &grid(dir.path()),
        &["--steps", "1000000", "--grace", "60"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(120, "both runs streaming", || {
        let r = runs(&server);
        r.len() == 2
            && r.iter()
                .all(|r| r["last_step"].as_u64().is_some_and(|s| s > 5))
    });
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(&mut child, Duration::from_secs(90));
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("cancelling the jobs"), "{log}");
    // Each trainer stopped cleanly: a checkpoint at its last step, and it said so.
    for v in ["a", "b"] {
        let out = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{v}-"))
            })
            .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("stopping at the next step boundary") && text.contains("checkpoint"),
            "{}: {text}",
            out.display()
        );
    }
    assert!(
        status.is_some(),
        "keel ablate did not end after Ctrl-C: {log}"
    );
    server.stop();
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// A job the scheduler refuses says why, and nothing is left submitted.
#[test]
fn a_grid_the_scheduler_refuses_says_why_and_leaves_no_job() {
    let Some((cluster, dir, server)) = setup() else {
        return;
    };
    let out = ablate(
        &cluster,
        dir.path(),
        &server,
        &grid(dir.path()),
        &["--partition", "nosuch"],
    )
    .output()
    .unwrap();
    let log = stderr(&out);
    assert!(!out.status.success());
    assert!(log.contains("the scheduler refused variant a"), "{log}");
    assert!(log.to_lowercase().contains("partition"), "{log}");
    assert_eq!(cluster.text("squeue", &["-h"]).trim(), "");
    assert!(runs(&server).is_empty());
    server.stop();
}
