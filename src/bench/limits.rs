//! `keel bench reads` and `keel bench bodies`: what the largest requests a client may send
//! cost a `keel serve` process, measured from outside it (its peak resident memory, `VmHWM`).
//!
//! - `reads`: one run of 1,000,000 steps × (24 layers × 7 statistics + 10 scalars); the
//!   time of one `points=100000` and one `columns=100000` answer, then both twice at once,
//!   four requests in flight, for three rounds. Budget: peak ≤ 150 MB, an answer ≤ 1 s.
//! - `bodies`: 100 clients at once each announce a 30 MiB ingest body and send it slowly,
//!   first without a token (each must get its 401 from the headers alone), then with one
//!   (past the server's 64 MiB of bodies in flight, 503 with `Retry-After`). Budget: peak
//!   ≤ 150 MB.
//!
//! Each prints a verdict line and fails (exit 1) when a budget is missed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{create, fill, open, serve, trainer_step};

const BUDGET_MB: f64 = 150.0;

/// Resident and peak resident memory of process `pid`, in MB.
pub(super) fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn verdict(what: &str, ok: bool) -> anyhow::Result<()> {
    println!("| verdict: {what} | {} |", if ok { "pass" } else { "FAIL" });
    anyhow::ensure!(ok, "over budget: {what}");
    Ok(())
}

pub async fn reads(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let steps = 1_000_000 / scale;
    let layers = 24;
    let path = dir.join("reads.db");
    // The fill takes minutes: a database left by an earlier run of this bench is reused.
    let ready = dir.join(format!("reads.db.{steps}.done"));
    if !ready.exists() {
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{end}", path.display()));
        }
        let store = open(&path).await?;
        let run = create(&store, "reads", layers).await?;
        let (values, secs) = fill(&store, run, steps, 2000, |s| trainer_step(s, layers)).await?;
        println!(
            "| fill: {steps} steps × {} values | {secs:.0} s ({:.0} values/s) |",
            values / steps,
            values as f64 / secs
        );
        drop(store);
        std::fs::write(&ready, b"")?;
    }
    let (mut child, url) = serve(&path)?;
    let pid = child.id();
    let result = tokio::task::spawn_blocking(move || read_load(pid, &url, steps)).await?;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Reads `path` to its last byte: (seconds, bytes).
fn timed(agent: &ureq::Agent, url: &str) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let mut resp = agent.get(url).call()?;
    anyhow::ensure!(resp.status() == 200, "{url}: {}", resp.status());
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n;
    }
    Ok((t.elapsed().as_secs_f64(), bytes))
}

fn buckets(agent: &ureq::Agent, url: &str) -> anyhow::Result<usize> {
    let body: serde_json::Value = agent
        .get(url)
        .call()?
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()?;
    Ok(body["step"].as_array().map_or(0, Vec::len))
}

fn read_load(pid: u32, url: &str, steps: u64) -> anyhow::Result<()> {
    let agent = ureq::Agent::new_with_defaults();
    let scalars = format!("{url}/api/v1/runs/1/scalars/loss?points=100000");
    let layers = format!("{url}/api/v1/runs/1/layers/hidden_var?columns=100000");
    let (before, _) = memory(pid);
    println!("| server resident before the reads | {before:.1} MB |");
    let mut slowest: f64 = 0.0;
    for (what, u) in [("points=100000", &scalars), ("columns=100000", &layers)] {
        let n = buckets(&agent, u)?;
        let times: Vec<f64> = (0..3)
            .map(|_| timed(&agent, u))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let (_, bytes) = timed(&agent, u)?;
        let best = super::median(times);
        slowest = slowest.max(best);
        println!(
            "| one `{what}` answer over {steps} steps: {n} buckets, {:.1} MB of JSON | {:.0} ms (median of 3) |",
            bytes as f64 / 1e6,
            best * 1000.0
        );
    }
    let t = Instant::now();
    for _ in 0..3 {
        let four: Vec<_> = [&scalars, &scalars, &layers, &layers]
            .into_iter()
            .map(|u| {
                let (agent, u) = (agent.clone(), u.clone());
                std::thread::spawn(move || timed(&agent, &u))
            })
            .collect();
        for h in four {
            h.join()
                .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
        }
    }
    let (after, peak) = memory(pid);
    println!(
        "| three rounds of four at once (2 × points, 2 × columns) | {:.1} s; resident after {after:.1} MB, peak {peak:.1} MB |",
        t.elapsed().as_secs_f64()
    );
    verdict(
        &format!("peak resident {peak:.1} MB ≤ {BUDGET_MB} MB"),
        peak <= BUDGET_MB,
    )?;
    verdict(
        &format!("slowest single answer {:.0} ms ≤ 1000 ms", slowest * 1000.0),
        slowest <= 1.0,
    )
}

pub async fn bodies(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("bodies.db");
    for end in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{end}", path.display()));
    }
    let store = open(&path).await?;
    create(&store, "bodies", 24).await?;
    drop(store);
    let (mut child, url) = serve(&path)?;
    let pid = child.id();
    let result = tokio::task::spawn_blocking(move || body_load(pid, &url)).await?;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Sends a POST announcing `size` bytes, then the body in 256 KiB pieces 20 ms apart until
/// the server answers or closes; returns the status line's code (0: none).
fn slow_upload(addr: &str, size: usize, token: Option<&str>) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST /api/v1/runs/1/steps HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {size}\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let piece = vec![b' '; 256 << 10];
    let mut sent = 0;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while sent < size {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        if s.write_all(&piece[..piece.len().min(size - sent)]).is_err() {
            break;
        }
        sent += piece.len();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if answer.is_empty() {
        let _ = s
            .read(&mut buf)
            .map(|n| answer.extend_from_slice(&buf[..n]));
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn body_load(pid: u32, url: &str) -> anyhow::Result<()> {
    let addr = url.trim_start_matches("http://").to_owned();
    let (before, _) = memory(pid);
    println!("| server resident before the uploads | {before:.1} MB |");
    for (what, token) in [("without a token", None), ("with the token", Some("bench"))] {
        let t = Instant::now();
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || slow_upload(&addr, 30 << 20, token))
            })
            .collect();
        let mut codes = std::collections::BTreeMap::<u16, u32>::new();
        for c in clients {
            *codes.entry(c.join().unwrap_or(0)).or_default() += 1;
        }
        let (after, peak) = memory(pid);
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{n} × {c}")).collect();
        println!(
            "| 100 slow 30 MiB uploads at once, {what}: answers {} | {:.1} s; resident after {after:.1} MB, peak {peak:.1} MB |",
            codes.join(", "),
            t.elapsed().as_secs_f64()
        );
    }
    let (_, peak) = memory(pid);
    verdict(
        &format!("peak resident {peak:.1} MB ≤ {BUDGET_MB} MB"),
        peak <= BUDGET_MB,
    )
}
