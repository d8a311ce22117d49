//! `keel bench load`: a `keel serve` process under the load of a busy lab, for 60 s.
//!
//! - 16 writers, each a run of 24 layers stepping 100 times a second: every step is 7 layer
//!   statistics × 24 layers + 10 scalars (178 values), sent the way the trainer's link sends
//!   them, a batch every 100 ms (10 steps).
//! - 50 live readers, each following one of those runs' Server-Sent Events; the lag of a step
//!   is the time from its creation at the writer (its `time`) to its arrival at a reader, so it
//!   includes the writer's batching, as a trainer's step → browser path does.
//! - 50 stalled readers that subscribe and then read nothing, as a frozen browser tab would.
//!
//! Budgets: no errors, step → SSE lag p99 ≤ 250 ms, peak resident memory ≤ 150 MB.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{serve, trainer_step};

const WRITERS: u64 = 16;
const READERS: u64 = 50;
const STALLED: u64 = 50;
const STEPS_PER_S: u64 = 100;
const BATCH: u64 = 10;
const LAYERS: u32 = 24;
const LAG_BUDGET_MS: f64 = 250.0;
const MEMORY_BUDGET_MB: f64 = 150.0;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub async fn load(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let seconds = 60 / scale.min(6);
    let path = dir.join("load.db");
    for end in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{end}", path.display()));
    }
    let figures = on(path.as_os_str(), seconds).await?;
    anyhow::ensure!(figures.verdict(), "keel bench load: over budget");
    Ok(())
}

/// What one load run measured.
pub struct Figures {
    pub values_per_s: f64,
    pub post_p99_ms: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub peak_mb: f64,
    pub errors: u64,
    pub lags: usize,
}

impl Figures {
    /// Prints the verdicts; whether every budget holds.
    pub fn verdict(&self) -> bool {
        let mut ok = true;
        for (what, pass) in [
            (format!("errors {} = 0", self.errors), self.errors == 0),
            (
                format!(
                    "step → SSE lag p99 {:.0} ms ≤ {LAG_BUDGET_MS} ms",
                    self.lag_p99_ms
                ),
                self.lag_p99_ms <= LAG_BUDGET_MS,
            ),
            (
                format!(
                    "peak resident {:.1} MB ≤ {MEMORY_BUDGET_MB} MB",
                    self.peak_mb
                ),
                self.peak_mb <= MEMORY_BUDGET_MB,
            ),
            (
                format!("every reader got steps ({} lags)", self.lags),
                self.lags > 0,
            ),
        ] {
            println!(
                "| verdict: {what} | {} |",
                if pass { "pass" } else { "FAIL" }
            );
            ok &= pass;
        }
        ok
    }
}

/// The load on a `keel serve` process over the database `db` (a file or a URL).
pub async fn on(db: &std::ffi::OsStr, seconds: u64) -> anyhow::Result<Figures> {
    let (mut child, url) = serve(db)?;
    let pid = child.id();
    let result = tokio::task::spawn_blocking(move || run(pid, &url, &url, seconds)).await?;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The same load over two `keel serve` processes on one database (PostgreSQL): the writers
/// post to the first, the readers follow the second, so a lag is a step's way from one server
/// to the other's stream. Memory is the first's.
pub async fn across(db: &std::ffi::OsStr, seconds: u64) -> anyhow::Result<Figures> {
    let (mut a, url_a) = serve(db)?;
    let (mut b, url_b) = serve(db)?;
    let pid = a.id();
    let result = tokio::task::spawn_blocking(move || run(pid, &url_a, &url_b, seconds)).await?;
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Writers post to `url`, readers follow `read_url`.
fn run(pid: u32, url: &str, read_url: &str, seconds: u64) -> anyhow::Result<Figures> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut runs = Vec::new();
    for i in 0..WRITERS {
        let spec = serde_json::json!({"name": format!("load-{i}"), "layers": LAYERS, "config": {}});
        let mut resp = agent
            .post(&format!("{url}/api/v1/runs"))
            .header("Authorization", "Bearer bench")
            .send_json(&spec)?;
        let body: serde_json::Value = resp.body_mut().read_json()?;
        runs.push(body["id"].as_i64().unwrap_or(0));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let lags = Arc::new(Mutex::new(Vec::<f64>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let url = format!(
            "{read_url}/api/v1/runs/{}/live",
            runs[(r % WRITERS) as usize]
        );
        let (stop, lags, received) = (stop.clone(), lags.clone(), received.clone());
        readers.push(std::thread::spawn(move || {
            follow(&url, &stop, &lags, &received)
        }));
    }
    let addr = read_url.trim_start_matches("http://").to_owned();
    let stalled: Vec<_> = (0..STALLED)
        .filter_map(|r| stall(&addr, runs[(r % WRITERS) as usize]).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (before, _) = super::limits::memory(pid);
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let posts = Arc::new(Mutex::new(Vec::<f64>::new()));
    let start = Instant::now();
    let writers: Vec<_> = runs
        .iter()
        .map(|&run| {
            let (agent, url) = (agent.clone(), url.to_owned());
            let (errors, posts) = (errors.clone(), posts.clone());
            std::thread::spawn(move || write(&agent, &url, run, seconds, &errors, &posts))
        })
        .collect();
    let mut peak_seen: f64 = 0.0;
    while writers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        peak_seen = peak_seen.max(super::limits::memory(pid).0);
    }
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the last steps reach the readers before stopping them.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (after, peak) = super::limits::memory(pid);
    drop(stalled);
    let mut posts = posts.lock().unwrap().clone();
    posts.sort_by(f64::total_cmp);
    let mut lags = lags.lock().unwrap().clone();
    lags.sort_by(f64::total_cmp);
    let errors = errors.lock().unwrap().clone();
    let error_count: u64 = errors.values().sum();
    let steps = posts.len() as u64 * BATCH;
    println!(
        "| load: {WRITERS} writers × {STEPS_PER_S} steps/s × 178 values, {READERS} live readers, {STALLED} stalled readers, {elapsed:.0} s | {steps} steps stored ({:.0} values/s) |",
        (steps * 178) as f64 / elapsed
    );
    println!(
        "| ingest POST (batch of {BATCH} steps): p50 / p99 | {:.1} ms / {:.1} ms |",
        percentile(&posts, 0.5) * 1e3,
        percentile(&posts, 0.99) * 1e3
    );
    println!(
        "| step → SSE lag over {} arrivals ({} events): p50 / p99 / max | {:.0} ms / {:.0} ms / {:.0} ms |",
        lags.len(),
        received.load(Ordering::Relaxed),
        percentile(&lags, 0.5) * 1e3,
        percentile(&lags, 0.99) * 1e3,
        lags.last().copied().unwrap_or(f64::NAN) * 1e3
    );
    println!(
        "| server resident: before the load / after / peak | {before:.1} MB / {after:.1} MB / {:.1} MB |",
        peak.max(peak_seen)
    );
    println!("| errors | {error_count} {errors:?} |");
    // The readers end with the server.
    drop(readers);
    Ok(Figures {
        values_per_s: (steps * 178) as f64 / elapsed,
        post_p99_ms: percentile(&posts, 0.99) * 1e3,
        lag_p50_ms: percentile(&lags, 0.5) * 1e3,
        lag_p99_ms: percentile(&lags, 0.99) * 1e3,
        peak_mb: peak.max(peak_seen),
        errors: error_count,
        lags: lags.len(),
    })
}

/// One writer: a batch of [`BATCH`] steps every 100 ms for `seconds`, each step stamped
/// with the time it was made.
fn write(
    agent: &ureq::Agent,
    url: &str,
    run: i64,
    seconds: u64,
    errors: &Mutex<BTreeMap<String, u64>>,
    posts: &Mutex<Vec<f64>>,
) {
    let every = Duration::from_millis(1000 * BATCH / STEPS_PER_S);
    let start = Instant::now();
    let mut next = start;
    let mut step = 0;
    let target = format!("{url}/api/v1/runs/{run}/steps");
    while start.elapsed() < Duration::from_secs(seconds) {
        let made = now();
        let steps: Vec<_> = (step..step + BATCH)
            .map(|s| {
                let mut r = trainer_step(s, LAYERS);
                // Spread over the batch's 100 ms, as the trainer makes them.
                r.time = Some(made - (step + BATCH - 1 - s) as f64 / STEPS_PER_S as f64);
                r
            })
            .collect();
        step += BATCH;
        let body = serde_json::json!({ "steps": steps });
        let t = Instant::now();
        let sent = agent
            .post(&target)
            .header("Authorization", "Bearer bench")
            .send_json(&body);
        let took = t.elapsed().as_secs_f64();
        match sent {
            Ok(r) if r.status() == 200 => posts.lock().unwrap().push(took),
            Ok(r) => {
                *errors
                    .lock()
                    .unwrap()
                    .entry(r.status().to_string())
                    .or_default() += 1
            }
            Err(e) => *errors.lock().unwrap().entry(e.to_string()).or_default() += 1,
        }
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// A live reader: every step's lag from its `time` to its arrival here.
fn follow(url: &str, stop: &AtomicBool, lags: &Mutex<Vec<f64>>, received: &AtomicU64) {
    let Ok(resp) = ureq::get(url).call() else {
        return;
    };
    let reader = BufReader::new(resp.into_body().into_reader());
    for line in reader.lines() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let arrived = now();
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if let Some(steps) = msg["steps"].as_array() {
            received.fetch_add(1, Ordering::Relaxed);
            let lag = steps
                .iter()
                .filter_map(|s| s["time"].as_f64())
                .map(|t| arrived - t);
            lags.lock().unwrap().extend(lag);
        }
    }
}

/// A reader that subscribes and then reads nothing; dropping it closes the connection.
fn stall(addr: &str, run: i64) -> std::io::Result<std::net::TcpStream> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    write!(
        conn,
        "GET /api/v1/runs/{run}/live HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut head = [0u8; 128];
    let _ = conn.read(&mut head)?;
    Ok(conn)
}
