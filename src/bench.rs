//! `keel bench`: the figures of docs/performance.md, measured on this machine.
//!
//! - `ingest`: values/s into the store (no HTTP), and through HTTP beside it.
//! - `query`: server time of a 1M-step × 64-layer heatmap in 1,000 columns and of a
//!   1M-step scalar series in 2,000 points (storage call plus JSON encoding), and the same
//!   through HTTP; and the server time of that run's page.
//! - `memory`: resident memory of a `keel serve` process over 100 runs × 100,000 steps.
//! - `commands`: command issued → applied by a real proxy-tiny trainer, over HTTP.
//! - `compare`: the compare page of 20 runs × 100,000 steps and its data, and the comparison
//!   exported as PNG, SVG and CSV (see [`compare`]).
//!
//! - `reads`, `bodies`: the peak memory of a `keel serve` process under the largest reads and
//!   request bodies a client may send (see [`limits`]). Not part of `all`: `reads` fills a
//!   1,000,000-step run first (minutes; `--dir` keeps it for the next time).
//! - `load`: 16 writers, 50 live and 50 stalled readers for 60 s: errors, ingest latency,
//!   step → SSE lag and peak memory, each against its budget (see [`load`]). Not in `all`.
//! - `backends`: ingest, query, memory and load on SQLite and on the PostgreSQL server of
//!   `--postgres`, side by side with the budgets (see [`backends`]). Not in `all`.
//! - `replicas`: `load` across two servers on one PostgreSQL database (`--postgres`): writers
//!   on one, readers on the other. Not in `all`.
//!
//! - `alerts`: the loss-spike detector on the labelled corpus of `keel_server::alerts::corpus`:
//!   spikes found and missed, false alerts per 10,000 steps, against the budgets.
//!
//! - `trainer`: a training step on `--device` in `--dtype` — tokens/s, MFU, the statistics'
//!   cost, host reads per step, peak memory, losses against the CPU (see [`trainer`]). Not in
//!   `all`; `scripts/gpu-check.sh` runs it on a GPU.
//!
//! `--quick` shrinks every size tenfold for a smoke run. Sizes print with the results.

mod backends;
mod compare;
mod limits;
mod load;
mod trainer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_protocol::{IngestBatch, Metric, RunSpec, StepRecord};
use keel_server::storage::series::Window;
use keel_server::storage::{Location, Store};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: ingest, query, memory, commands, compare, alerts, all (those six),
    /// reads, bodies, load, backends or replicas (with --postgres) or trainer.
    #[arg(default_value = "all")]
    which: String,
    /// Ten times smaller sizes, for a quick check.
    #[arg(long)]
    quick: bool,
    /// Keep the databases here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// For `backends`: a PostgreSQL server (a URL whose user may create databases) to run
    /// beside SQLite; databases are made on it for the run and dropped at the end.
    #[arg(long, env = "KEEL_BENCH_POSTGRES")]
    postgres: Option<String>,
    #[command(flatten)]
    trainer: trainer::TrainerBenchArgs,
}

const BENCHES: [&str; 13] = [
    "all", "ingest", "query", "memory", "commands", "compare", "reads", "bodies", "load", "alerts",
    "trainer", "backends", "replicas",
];

impl BenchArgs {
    /// Whether this benchmark trains (and so runs with the trainer's settings).
    pub fn trains(&self) -> bool {
        self.which == "trainer"
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        BENCHES.contains(&args.which.as_str()),
        "no benchmark `{}`: choose one of {}",
        args.which,
        BENCHES.join(", ")
    );
    if args.which == "trainer" {
        println!("| load average before | {} |", load_average());
        trainer::run(args.trainer)?;
        println!("| load average after | {} |", load_average());
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let scale = if args.quick { 10 } else { 1 };
    println!("| load average before | {} |", load_average());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let all = args.which == "all";
    if all || args.which == "ingest" {
        rt.block_on(ingest(&dir, scale))?;
    }
    if all || args.which == "query" {
        rt.block_on(query(&dir, scale))?;
    }
    if all || args.which == "memory" {
        rt.block_on(memory(&dir, scale))?;
    }
    if all || args.which == "commands" {
        rt.block_on(commands(&dir))?;
    }
    if all || args.which == "compare" {
        rt.block_on(compare::compare(&dir, scale))?;
    }
    if args.which == "reads" {
        rt.block_on(limits::reads(&dir, scale))?;
    }
    if args.which == "bodies" {
        rt.block_on(limits::bodies(&dir))?;
    }
    if args.which == "load" {
        rt.block_on(load::load(&dir, scale))?;
    }
    if all || args.which == "alerts" {
        alerts()?;
    }
    if args.which == "backends" || args.which == "replicas" {
        let server = args.postgres.as_deref().with_context(|| {
            format!(
                "keel bench {} needs --postgres URL (or KEEL_BENCH_POSTGRES): a PostgreSQL \
                 server whose user may create databases",
                args.which
            )
        })?;
        match args.which.as_str() {
            "backends" => rt.block_on(backends::backends(&dir, scale, server))?,
            _ => rt.block_on(backends::replicas(scale, server))?,
        }
    }
    println!("| load average after | {} |", load_average());
    Ok(())
}

/// The 1-, 5- and 15-minute load averages: these figures are only as good as the machine
/// was quiet.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A step like the trainer's: 10 scalars and 7 statistics of `layers` values.
fn trainer_step(step: u64, layers: u32) -> StepRecord {
    let v = |i: u64| Metric(((step * 31 + i * 17) % 1000) as f64 / 100.0 + 0.01);
    let scalars: BTreeMap<String, Metric> = keel_protocol::SCALARS[..7]
        .iter()
        .chain(&["loss/code", "loss/math", "loss/prose"])
        .enumerate()
        .map(|(i, k)| (k.to_string(), v(i as u64)))
        .collect();
    let layers_map = keel_protocol::LAYER_STATS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.to_string(),
                (0..layers as u64).map(|l| v(i as u64 * 100 + l)).collect(),
            )
        })
        .collect();
    StepRecord {
        step,
        time: None,
        tokens: None,
        scalars,
        layers: layers_map,
    }
}

fn values_in(r: &StepRecord) -> u64 {
    (r.scalars.len() + r.layers.values().map(Vec::len).sum::<usize>()) as u64
}

async fn open(at: impl Into<Location>) -> anyhow::Result<Store> {
    let (store, mut changes) = Store::open(at).await?;
    // Nobody listens live in a benchmark: drain the change feed.
    tokio::spawn(async move { while changes.recv().await.is_some() {} });
    Ok(store)
}

async fn create(store: &Store, name: &str, layers: u32) -> anyhow::Result<i64> {
    let spec = RunSpec {
        name: name.into(),
        group: Some("bench".into()),
        tags: vec![],
        config: serde_json::json!({}),
        layers,
        variant: None,
        protocol: None,
        ranks: None,
    };
    Ok(store.create_run(spec, "bench".into()).await?)
}

/// Writes `steps` steps made by `make` in batches; returns values written and seconds.
async fn fill(
    store: &Store,
    run: i64,
    steps: u64,
    batch: u64,
    make: impl Fn(u64) -> StepRecord,
) -> anyhow::Result<(u64, f64)> {
    let mut values = 0;
    let mut busy = Duration::ZERO;
    for start in (0..steps).step_by(batch as usize) {
        let records: Vec<_> = (start..(start + batch).min(steps)).map(&make).collect();
        values += records.iter().map(values_in).sum::<u64>();
        let t = Instant::now();
        let b = IngestBatch {
            branch: None,
            steps: records,
        };
        store.ingest(run, b).await?;
        busy += t.elapsed();
    }
    Ok((values, busy.as_secs_f64()))
}

async fn ingest(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let steps = 20_000 / scale;
    let store = open(&dir.join("ingest.db")).await?;
    let run = create(&store, "ingest", 24).await?;
    let (values, secs) = fill(&store, run, steps, 500, |s| trainer_step(s, 24)).await?;
    println!(
        "| store ingest, {steps} steps × 178 values, batches of 500 | {:.0} values/s ({:.0} steps/s) |",
        values as f64 / secs,
        steps as f64 / secs
    );
    drop(store);
    let (values, secs) = http_ingest(dir, steps, 100).await?;
    println!(
        "| HTTP ingest, same steps, batches of 100, one client | {:.0} values/s ({:.0} steps/s) |",
        values as f64 / secs,
        steps as f64 / secs
    );
    Ok(())
}

/// A real server on port 0 and a blocking client posting JSON batches to it.
async fn http_ingest(dir: &Path, steps: u64, batch: u64) -> anyhow::Result<(u64, f64)> {
    let config = keel_server::Config::new(dir.join("http.db"), "bench".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(keel_server::serve(config, listener, stop.clone()));
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, f64)> {
        let agent = ureq::Agent::new_with_defaults();
        let spec = serde_json::json!({"name": "http", "layers": 24});
        let id: serde_json::Value = agent
            .post(&format!("{url}/api/v1/runs"))
            .header("Authorization", "Bearer bench")
            .send_json(&spec)?
            .body_mut()
            .read_json()?;
        let id = id["id"].as_i64().context("a run id")?;
        let bodies: Vec<(u64, Vec<u8>)> = (0..steps)
            .step_by(batch as usize)
            .map(|s| {
                let records: Vec<_> = (s..(s + batch).min(steps))
                    .map(|s| trainer_step(s, 24))
                    .collect();
                let n = records.iter().map(values_in).sum();
                (
                    n,
                    serde_json::to_vec(&IngestBatch {
                        branch: None,
                        steps: records,
                    })
                    .unwrap(),
                )
            })
            .collect();
        let t = Instant::now();
        let mut values = 0;
        for (n, body) in bodies {
            agent
                .post(&format!("{url}/api/v1/runs/{id}/steps"))
                .header("Authorization", "Bearer bench")
                .content_type("application/json")
                .send(&body[..])?;
            values += n;
        }
        Ok((values, t.elapsed().as_secs_f64()))
    })
    .await?;
    stop.cancel();
    server.await??;
    result
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn query(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let steps = 1_000_000 / scale;
    let path = dir.join("query.db");
    let store = open(&path).await?;
    let run = create(&store, "query", 64).await?;
    let (values, secs) = fill(&store, run, steps, 2000, query_step).await?;
    println!(
        "| fill: {steps} steps × (64 layers + 1 scalar) | {:.0} values/s, {secs:.0} s |",
        values as f64 / secs
    );
    let row = store.run_row(run).await?;
    let mut heat = Vec::new();
    let mut line = Vec::new();
    for _ in 0..15 {
        let (h, l) = read_query_run(&store, &row).await?;
        heat.push(h);
        line.push(l);
    }
    println!(
        "| heatmap {steps} steps × 64 layers → 1,000 columns (query + JSON), median of 15 | {:.1} ms |",
        median(heat)
    );
    println!(
        "| scalar series {steps} steps → 2,000 points (query + JSON), median of 15 | {:.1} ms |",
        median(line)
    );
    // The run page itself: it carries names, not series, so its cost must not grow with steps.
    let mut page = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let detail = store.run_detail(run).await?;
        let html = keel_server::views::RunPage::new(&detail, 0.0).to_html()?;
        page.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(html.len() < 64 * 1024);
    }
    println!(
        "| run page of that run (query + template), median of 15 | {:.2} ms |",
        median(page)
    );
    Ok(())
}

/// A step of the query run: a loss and a 64-layer `hidden_var`.
fn query_step(s: u64) -> StepRecord {
    let mut r = StepRecord {
        step: s,
        time: None,
        tokens: None,
        scalars: BTreeMap::new(),
        layers: BTreeMap::new(),
    };
    let v = |i: u64| Metric(((s * 7 + i * 13) % 997) as f64 / 10.0);
    r.scalars.insert("loss".into(), v(0));
    r.layers
        .insert("hidden_var".into(), (0..64).map(v).collect());
    r
}

/// The query run's heatmap in 1,000 columns and loss in 2,000 points, each with its JSON:
/// milliseconds of each.
async fn read_query_run(
    store: &Store,
    row: &keel_server::storage::runs::RunRow,
) -> anyhow::Result<(f64, f64)> {
    let window = |buckets| Window {
        from: None,
        to: None,
        buckets,
        branch: None,
    };
    let t = Instant::now();
    let m = store.layer_matrix(row, "hidden_var", window(1000)).await?;
    let json = serde_json::to_vec(&m)?;
    let heat = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(m.step.len() <= 1000 && !json.is_empty());
    let t = Instant::now();
    let s = store.scalar_series(row, "loss", window(2000)).await?;
    let json = serde_json::to_vec(&s)?;
    let line = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(s.step.len() <= 2000 && !json.is_empty());
    Ok((heat, line))
}

async fn memory(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let (runs_n, steps) = (100 / scale, 100_000 / scale);
    let path = dir.join("memory.db");
    fill_runs(&path, runs_n, steps).await?;
    let (mut child, url) = serve(&path)?;
    let result = memory_of(child.id(), url, runs_n, steps).await;
    let _ = child.kill();
    let _ = child.wait();
    let (rss, hwm) = result?;
    println!("| server memory after reading every run: resident {rss:.1} MB, peak {hwm:.1} MB |");
    Ok(())
}

/// Fills `runs_n` runs of `steps` steps each: loss, LR, tokens and an 8-layer `hidden_var`.
async fn fill_runs(at: impl Into<Location>, runs_n: u64, steps: u64) -> anyhow::Result<()> {
    let store = open(at).await?;
    let t = Instant::now();
    for i in 0..runs_n {
        let run = create(&store, &format!("run-{i}"), 8).await?;
        let make = |s: u64| {
            let mut r = StepRecord {
                step: s,
                time: None,
                tokens: Some(s * 1024),
                scalars: BTreeMap::new(),
                layers: BTreeMap::new(),
            };
            r.scalars
                .insert("loss".into(), Metric(5.0 / (1.0 + s as f64 / 1000.0)));
            r.scalars.insert("lr".into(), Metric(0.01));
            // Growing with depth and over the run, as in a drifting proxy: every heatmap
            // column differs from the last, which is what an image export pays for.
            let drift = 1.0 + s as f64 / 20_000.0;
            r.layers.insert(
                "hidden_var".into(),
                (0..8).map(|l| Metric((1.0 + l as f64) * drift)).collect(),
            );
            r
        };
        fill(&store, run, steps, 5000, make).await?;
    }
    println!(
        "| fill: {runs_n} runs × {steps} steps (2 scalars + tokens + 8-layer stat) | {:.0} s |",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts `keel serve` over `path` on a free port and returns it with the URL it serves,
/// read from its log (which a thread then keeps draining).
fn serve(db: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("KEEL_TOKEN", "bench")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("the server's stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            anyhow::bail!("the server exited");
        };
        if let Some(rest) = line?.split("keel is serving ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, url))
}

/// Queries every run of the server at `url` (process `pid`), then reads its memory:
/// resident and peak, in MB.
async fn memory_of(pid: u32, url: String, runs_n: u64, steps: u64) -> anyhow::Result<(f64, f64)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
        let agent = ureq::Agent::new_with_defaults();
        agent.get(&format!("{url}/api/v1/runs")).call()?;
        for id in 1..=runs_n {
            for path in [
                "",
                "/scalars/loss?points=2000",
                "/layers/hidden_var?columns=1000",
                "/scalars/tokens",
            ] {
                agent.get(&format!("{url}/api/v1/runs/{id}{path}")).call()?;
            }
        }
        compare::page(&agent, &url, runs_n.min(20), steps)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        };
        let rss: f64 = field("VmRSS:").unwrap_or_default().parse().unwrap_or(0.0);
        let hwm: f64 = field("VmHWM:").unwrap_or_default().parse().unwrap_or(0.0);
        Ok((rss / 1024.0, hwm / 1024.0))
    })
    .await?
}

/// Issues 20 commands to a running proxy-tiny trainer and times each from the POST to the
/// moment the server has its `applied` outcome: the click-to-applied path minus the browser.
async fn commands(dir: &Path) -> anyhow::Result<()> {
    let config = keel_server::Config::new(dir.join("commands.db"), "bench".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop_server = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(keel_server::serve(config, listener, stop_server.clone()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = keel_trainer::TrainOptions {
        config: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/proxy-tiny.toml"
        )),
        server: Some(url.clone()),
        token: Some("bench".into()),
        device: "cpu".into(),
        steps: Some(1_000_000),
        checkpoint_dir: Some(dir.join("commands-checkpoints")),
        ..Default::default()
    };
    let flag = stop.clone();
    let trainer = std::thread::spawn(move || keel_trainer::train(opts, flag));
    let timed = tokio::task::spawn_blocking(move || time_commands(&url)).await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || trainer.join()).await?;
    stop_server.cancel();
    server.await??;
    let (latencies, step_ms) = timed?;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "| command → applied, proxy-tiny trainer ({:.1} ms steps), {} commands | median {:.1} ms, p90 {:.1} ms, max {:.1} ms |",
        step_ms,
        sorted.len(),
        median(latencies),
        sorted[sorted.len() * 9 / 10],
        sorted[sorted.len() - 1]
    );
    Ok(())
}

fn time_commands(url: &str) -> anyhow::Result<(Vec<f64>, f64)> {
    let agent = ureq::Agent::new_with_defaults();
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        Ok(agent
            .get(&format!("{url}{path}"))
            .call()?
            .body_mut()
            .read_json()?)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trainer never reached step 20"
        );
        let runs = get("/api/v1/runs")?;
        if runs[0]["last_step"].as_u64().unwrap_or(0) >= 20 {
            break runs[0]["id"].as_i64().context("a run id")?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut latencies = Vec::new();
    let mut delivered = Vec::new();
    for i in 0..20 {
        let body = serde_json::json!({"kind": "set_grad_clip", "max_norm": 1.0 - i as f64 * 0.01});
        let t = Instant::now();
        let issued: serde_json::Value = agent
            .post(&format!("{url}/api/v1/runs/{run}/commands"))
            .header("Authorization", "Bearer bench")
            .send_json(&body)?
            .body_mut()
            .read_json()?;
        let id = issued["id"].as_i64().context("a command id")?;
        let mut seen_delivered = false;
        loop {
            let list = get(&format!("/api/v1/runs/{run}/commands"))?;
            let this = list
                .as_array()
                .and_then(|l| l.iter().find(|c| c["id"] == id));
            let status = this.map(|c| c["status"].clone()).unwrap_or_default();
            if !seen_delivered && status != "queued" {
                seen_delivered = true;
                delivered.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if status == "applied" {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "command {id} was not applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let steps = get(&format!("/api/v1/runs/{run}/scalars/step_time_s?points=1"))?;
    let step_ms = steps["mean"][0].as_f64().unwrap_or(f64::NAN) * 1e3;
    println!(
        "| command → delivered to the trainer (its long poll answered), 20 commands | median {:.1} ms |",
        median(delivered)
    );
    Ok((latencies, step_ms))
}

/// The spike detectors scored on the labelled corpus, with a verdict per budget.
fn alerts() -> anyhow::Result<()> {
    use keel_server::alerts::corpus;
    let mut ok = true;
    for (alert, healthy, spiked, what) in [
        (
            "loss_spike",
            corpus::healthy_losses(),
            corpus::spiked_losses(),
            "losses (noise 1–15 %, warmup, LR drop, data-mix switch)",
        ),
        (
            "grad_norm_spike",
            corpus::healthy_grad_norms(),
            corpus::spiked_grad_norms(),
            "grad norms (noise 5–30 %, warmup, LR drop, lone one-batch outliers)",
        ),
    ] {
        let healthy = corpus::score(healthy);
        let spiked = corpus::score(spiked);
        println!(
            "| {alert} on healthy generated {what}, {} steps: false alerts | ≤ 1 per 10,000 steps | {:.2} per 10,000 steps ({}) |",
            healthy.steps,
            healthy.false_per_10k(),
            healthy.false_alerts.len()
        );
        println!(
            "| {alert} on the same with injected spikes of 6–15 σ, {} steps: spikes found at their step | all {} | {} found, {} missed; {:.2} false alerts per 10,000 steps |",
            spiked.steps,
            spiked.injected,
            spiked.found,
            spiked.missed.len(),
            spiked.false_per_10k()
        );
        ok &= healthy.false_per_10k() <= 1.0 && spiked.missed.is_empty();
    }
    for series in corpus::real_runs() {
        let label = series.label.clone();
        let (alert, steps) = (series.alert(), series.values.len());
        let score = corpus::score(vec![series]);
        println!(
            "| {alert} on the real run {label}, {steps} steps: false alerts | none | {} {:?} |",
            score.false_alerts.len(),
            score
                .false_alerts
                .iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
        );
        ok &= score.false_alerts.is_empty();
    }
    for run in corpus::real_run_alerts() {
        let depth: Vec<String> = run
            .depth()
            .iter()
            .map(|(n, s)| format!("{n} at {s}"))
            .collect();
        println!(
            "| depth and attention alerts on the real run {} | {} | {} |",
            run.name,
            run.depth_expected.unwrap_or("none"),
            match depth.is_empty() {
                true => "none".to_string(),
                false => depth.join(", "),
            }
        );
        ok &= run.depth_as_expected();
    }
    println!("| verdict: alerts | {} |", if ok { "pass" } else { "FAIL" });
    anyhow::ensure!(
        ok,
        "the spike detectors are over their budgets on the corpus"
    );
    Ok(())
}
