//! `keel ablate --slurm` and `keel serve --launcher slurm` on a real one-node SLURM cluster
//! (`scripts/slurm-test-cluster.sh`: Debian's slurm-wlm and munge, installed when missing).
//! `KEEL_SKIP_SLURM=1` skips these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Process, Server, free_addr, post_with_token as post, wait_for};
use crate::webdriver;

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
    assert!(log.contains("COMPLETED  exit code 0"), "{log}");
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
        assert!(script.contains(" 'train' '--grid' "), "{script}");
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
                    .contains(&format!("-{v}-"))
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

/// A grids folder in `dir` with `pair.toml`: two variants of the smallest proxy, and a
/// `[launch.slurm]` table with a time limit and a job comment.
fn grids(dir: &Path) -> PathBuf {
    let grids = dir.join("grids");
    std::fs::create_dir_all(&grids).unwrap();
    std::fs::write(
        grids.join("pair.toml"),
        "base = \"proxy-tiny\"\n[variants.a]\noptim.lr = 0.003\n[variants.b]\noptim.lr = 0.01\n\
         [launch.slurm]\ntime = \"10:00\"\nargs = [\"--comment=from-the-grid\"]\n",
    )
    .unwrap();
    grids
}

/// `keel serve --launcher slurm` on the test cluster, on `addr`, working in `dir` (its
/// database, grids, job logs and the trainers' checkpoints are there); its log goes to
/// `dir/serve.log`.
fn serve(cluster: &Cluster, dir: &Path, addr: SocketAddr, extra: &[&str]) -> Process {
    let grids = grids(dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .unwrap();
    Process::start_with(&dir.join("keel.db"), addr, |cmd| {
        cmd.current_dir(dir)
            .args(["--launcher", "slurm", "--slurm-poll", "0.5", "--grids"])
            .arg(&grids)
            .arg("--slurm-logs")
            .arg(dir.join("logs"))
            .args(extra)
            .env("SLURM_CONF", &cluster.conf)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LOG", "info")
            .env("CANDLE_NUM_THREADS", "1")
            .stderr(log.try_clone().unwrap());
    })
}

fn serve_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

fn launch(serve: &Process, steps: u64) -> Value {
    let (status, l) = post(
        &serve.url,
        "/api/v1/launches",
        Some(json!({"grid": "pair", "steps": steps})),
    );
    assert_eq!(status, 201, "{l}");
    l
}

/// Polls launch `id` until `done` holds, for at most `secs` seconds.
fn wait_launch(
    serve: &Process,
    id: &Value,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let path = format!("/api/v1/launches/{id}");
    wait_for(secs, what, || {
        last = serve.get(&path);
        done(&last)
    });
    last
}

fn variants(l: &Value) -> &Vec<Value> {
    l["variants"].as_array().unwrap()
}

fn steps(serve: &Process, run: &Value) -> u64 {
    serve.get(&format!("/api/v1/runs/{run}"))["steps"]
        .as_u64()
        .unwrap_or(0)
}

/// Both variants' jobs running, their runs stepping past `past`.
fn both_stepping(serve: &Process, l: &Value, past: u64) -> bool {
    variants(l).iter().all(|v| {
        v["state"] == "running" && v["run_id"].is_i64() && steps(serve, &v["run_id"]) > past
    })
}

/// A grid launched from the API becomes one job per variant, with the server's and the grid's
/// sbatch options (the grid's win); each job's run streams, and the token is in no job.
#[test]
fn a_grid_launched_through_the_api_runs_each_variant_as_a_slurm_job() {
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // Trainers are told the public URL, not the listening address.
    let public = format!("http://localhost:{}", addr.port());
    let serve = serve(
        &cluster,
        dir.path(),
        addr,
        &[
            "--partition",
            "debug",
            "--time",
            "5:00",
            "--public-url",
            &public,
        ],
    );
    let l = launch(&serve, 30);
    let id = l["id"].clone();
    let group = l["group"].as_str().unwrap().to_owned();
    let l = wait_launch(&serve, &id, 180, "both jobs to complete", |l| {
        l["active"] == false
    });
    let log = serve_log(dir.path());
    for v in variants(&l) {
        assert_eq!(v["state"], "finished", "{v}\n{log}");
        assert_eq!(v["exit"], "exit code 0 (COMPLETED)", "{v}");
        assert!(v["job"].is_string() && v["node"].is_string(), "{v}");
        let out = v["log"].as_str().unwrap();
        assert!(
            out.ends_with(&format!(
                "{group}-{}-{}.out",
                v["name"].as_str().unwrap(),
                v["job"].as_str().unwrap()
            )),
            "{out}"
        );
        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.contains("step"), "{text}");
        let run = serve.get(&format!("/api/v1/runs/{}", v["run_id"]));
        assert_eq!(run["status"], "finished", "{run}");
        assert_eq!(run["group"], group.as_str());
        assert_eq!(run["last_step"], 29, "{run}");

        let job = v["job"].as_str().unwrap();
        let shown = cluster.text("scontrol", &["show", "job", "--oneliner", job]);
        assert!(shown.contains("Partition=debug"), "{shown}");
        // The grid's time limit wins over the server's; its extra argument is there too.
        assert!(shown.contains("TimeLimit=00:10:00"), "{shown}");
        assert!(shown.contains("Comment=from-the-grid"), "{shown}");
        let script = cluster.text("scontrol", &["write", "batch_script", job, "-"]);
        assert!(
            script.contains(" 'train' ") && script.contains(&format!("'--server' '{public}'")),
            "{script}"
        );
        assert!(
            !shown.contains(TOKEN) && !script.contains(TOKEN),
            "the token shows in job {job}"
        );
    }
}

/// The jobs outlive a server killed mid-launch: the next server on the database follows the
/// same jobs. Cancelling one variant then stops its trainer with a checkpoint (SIGTERM first)
/// while the other goes on, and cancelling the launch stops that one too, leaving no job.
#[test]
fn slurm_jobs_survive_a_server_restart_and_cancel_with_a_checkpoint() {
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let first = serve(&cluster, dir.path(), addr, &[]);
    let id = launch(&first, 1_000_000)["id"].clone();
    let l = wait_launch(&first, &id, 120, "both runs to stream", |l| {
        both_stepping(&first, l, 5)
    });
    let jobs: Vec<Value> = variants(&l).iter().map(|v| v["job"].clone()).collect();
    assert!(variants(&l).iter().all(|v| v["node"].is_string()), "{l}");
    first.kill();

    let second = serve(&cluster, dir.path(), addr, &[]);
    let l = second.get(&format!("/api/v1/launches/{id}"));
    let again: Vec<Value> = variants(&l).iter().map(|v| v["job"].clone()).collect();
    assert_eq!(again, jobs, "the restarted server follows the same jobs");
    let before: Vec<u64> = variants(&l)
        .iter()
        .map(|v| steps(&second, &v["run_id"]))
        .collect();
    wait_launch(
        &second,
        &id,
        60,
        "the runs to stream to the new server",
        |l| {
            variants(l)
                .iter()
                .zip(&before)
                .all(|(v, b)| v["state"] == "running" && steps(&second, &v["run_id"]) > b + 3)
        },
    );

    let (status, l) = post(
        &second.url,
        &format!("/api/v1/launches/{id}/variants/a/cancel"),
        None,
    );
    assert_eq!(status, 200, "{l}");
    assert_eq!(l["variants"][0]["cancelled"], true);
    let l = wait_launch(&second, &id, 90, "variant a to show cancelled", |l| {
        l["variants"][0]["state"] == "cancelled"
    });
    assert_eq!(l["variants"][1]["state"], "running", "{l}");
    assert_eq!(l["active"], true);
    let b = &l["variants"][1]["run_id"];
    let b_steps = steps(&second, b);
    wait_for(30, "variant b to go on", || steps(&second, b) > b_steps + 3);

    let (status, l) = post(&second.url, &format!("/api/v1/launches/{id}/cancel"), None);
    assert_eq!(status, 200, "{l}");
    let l = wait_launch(&second, &id, 90, "both variants to show cancelled", |l| {
        l["active"] == false
    });
    for v in variants(&l) {
        assert_eq!(v["state"], "cancelled", "{v}\n{}", serve_log(dir.path()));
        let out = std::fs::read_to_string(v["log"].as_str().unwrap()).unwrap();
        assert!(
            out.contains("stopping at the next step boundary") && out.contains("checkpoint"),
            "{out}"
        );
        let run = second.get(&format!("/api/v1/runs/{}", v["run_id"]));
        assert_ne!(run["status"], "failed", "{run}");
    }
    assert_eq!(cluster.text("squeue", &["-h"]).trim(), "");
}

/// A job the scheduler refuses fails its variant with the scheduler's message; the variants
/// after it are not submitted, and no job is left.
#[test]
fn a_launch_the_scheduler_refuses_says_why_and_leaves_no_job() {
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(
        &cluster,
        dir.path(),
        free_addr(),
        &["--partition", "nosuch"],
    );
    let id = launch(&serve, 30)["id"].clone();
    let l = wait_launch(&serve, &id, 30, "the launch to end", |l| {
        l["active"] == false
    });
    let [a, b] = &variants(&l)[..] else {
        panic!("{l}")
    };
    assert_eq!(a["state"], "failed", "{a}");
    assert_eq!(a["exit"], "refused by the scheduler");
    let said = a["stderr"].to_string().to_lowercase();
    assert!(said.contains("partition"), "{a}");
    assert_eq!(b["state"], "cancelled", "{b}");
    assert_eq!(b["exit"], "not submitted: the scheduler refused variant a");
    assert!(a["job"].is_null() && b["job"].is_null());
    assert_eq!(cluster.text("squeue", &["-h"]).trim(), "");
    assert_eq!(serve.get("/api/v1/runs").as_array().unwrap().len(), 0);
}

/// Without SLURM's commands the server refuses to start, saying what is missing.
#[test]
fn a_slurm_server_without_sbatch_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir.path())
        .args(["serve", "--addr", "127.0.0.1:0", "--launcher", "slurm"])
        .env("KEEL_TOKEN", TOKEN)
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("`sbatch` is not on PATH"), "{said}");
    // And sbatch options without SLURM are a mistake, not ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir.path())
        .args(["serve", "--addr", "127.0.0.1:0", "--partition", "gpu"])
        .env("KEEL_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("need --launcher slurm"),
        "{}",
        stderr(&out)
    );
}

/// An operator launches the grid from the runs page of a SLURM server, sees each variant's
/// job and node, and cancels it there.
#[test]
fn an_operator_launches_and_cancels_a_slurm_grid_from_the_runs_page() {
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(&cluster, dir.path(), free_addr(), &["--partition", "debug"]);
    let Some(b) = webdriver::Browser::start(1280, 900) else {
        return;
    };
    let patience = Duration::from_secs(120);
    b.goto(&format!("{}/login?next=/", serve.url));
    b.submit_login(TOKEN, patience);
    b.wait_for(
        "the grids",
        patience,
        "const b = document.getElementById('launch-submit'); return b && !b.disabled",
    );
    let engine = b.eval(
        "const s = document.getElementById('launch-grid'); \
         s.value = 'pair'; s.dispatchEvent(new Event('change')); \
         return document.getElementById('launch-engine').textContent",
        json!([]),
    );
    assert!(
        engine
            .as_str()
            .unwrap()
            .contains("SLURM job (partition debug"),
        "{engine}"
    );
    b.eval(
        "document.getElementById('launch-steps').value = '1000000'; \
         document.getElementById('launch-submit').click()",
        json!([]),
    );
    // Each variant shows its job running on the node, with a link to its run.
    let jobs = b.wait_for(
        "both jobs to run on the page",
        patience,
        "const vs = [...document.querySelectorAll('#launches li[data-variant]')]; \
         const ok = vs.length === 2 && vs.every((v) => v.dataset.state === 'running' \
           && v.querySelector('a[href^=\"/runs/\"]') \
           && / on \\S+$/.test(v.querySelector('.job')?.textContent ?? '')); \
         return ok && vs.map((v) => v.querySelector('.job').textContent)",
    );
    let shown: Vec<String> = serde_json::from_value(jobs).unwrap();
    let l = serve.get("/api/v1/launches");
    assert_eq!(l[0]["issued_by"], "browser");
    for (text, v) in shown.iter().zip(variants(&l[0])) {
        assert!(
            text.starts_with(&format!("job {} on ", v["job"].as_str().unwrap())),
            "{text}"
        );
    }
    // One variant cancelled alone, from its own button: it stops, the other runs on.
    b.eval(
        "window.confirm = () => true; \
         document.querySelector('#launches li[data-variant=a] button[data-cancel-variant]').click()",
        json!([]),
    );
    b.wait_for(
        "variant a to show cancelled",
        patience,
        "const a = document.querySelector('#launches li[data-variant=a]'); \
         const b = document.querySelector('#launches li[data-variant=b]'); \
         return a.dataset.state === 'cancelled' && !a.querySelector('button') \
           && b.dataset.state === 'running' && b.querySelector('button[data-cancel-variant]')",
    );
    if let Some(path) = std::env::var_os("KEEL_SLURM_SCREENSHOT") {
        b.wait_for(
            "the runs in the table",
            patience,
            "return document.querySelectorAll('#runs-body tr[data-run]').length === 2",
        );
        std::fs::write(path, b.screenshot()).unwrap();
    }
    b.eval(
        "window.confirm = () => true; \
         document.querySelector('#launches li[data-launch] button[data-cancel]').click()",
        json!([]),
    );
    b.wait_for(
        "both variants to show cancelled",
        patience,
        "const l = document.querySelector('#launches li[data-launch]'); \
         const vs = [...l.querySelectorAll('li[data-variant]')]; \
         return vs.length === 2 && vs.every((v) => v.dataset.state === 'cancelled') \
           && !l.querySelector('button[data-cancel]')",
    );
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
    assert_eq!(cluster.text("squeue", &["-h"]).trim(), "");
}
