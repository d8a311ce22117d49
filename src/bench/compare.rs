//! `keel bench compare`: comparing 20 runs of 100,000 steps, over HTTP on loopback against a
//! `keel serve` process — the compare page, the page with every fetch its script makes, and
//! the comparison exported as PNG, SVG and CSV with the export links' default options.
//!
//! Each figure is a median of 5 requests, timed from the request to the last byte read.
//! Responses are not compressed (the client does not ask for it); one more row gives the SVG
//! as a browser asks for it, gzip-compressed, since compression is server time too.

use std::path::Path;
use std::time::Instant;

use super::{fill_runs, median, serve};

pub async fn compare(dir: &Path, scale: u64) -> anyhow::Result<()> {
    let (runs_n, steps) = (20, 100_000 / scale);
    let path = dir.join("compare.db");
    // A fresh database: runs left by an earlier bench would change the figures.
    for end in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{end}", path.display()));
    }
    fill_runs(&path, runs_n, steps).await?;
    let (mut child, url) = serve(&path)?;
    let result = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_defaults();
        page(&agent, &url, runs_n, steps)?;
        exports(&agent, &url, runs_n, steps)
    })
    .await?;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The compare page over the first `n` runs: the page itself, and the page plus the data its
/// script fetches (each run's loss at 600 points and `hidden_var` at 300 columns), medians of 5
/// over HTTP on loopback.
pub fn page(agent: &ureq::Agent, url: &str, n: u64, steps: u64) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let page = format!("{url}/compare?runs={}", ids.join(","));
    let (mut html, mut all) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let body = agent.get(&page).call()?.body_mut().read_to_string()?;
        anyhow::ensure!(
            body.contains("run-1"),
            "the compare page does not name its runs"
        );
        html.push(t.elapsed().as_secs_f64() * 1e3);
        for id in &ids {
            agent
                .get(&format!("{url}/api/v1/runs/{id}/scalars/loss?points=600"))
                .call()?;
            agent
                .get(&format!(
                    "{url}/api/v1/runs/{id}/layers/hidden_var?columns=300"
                ))
                .call()?;
        }
        all.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "| compare page of {n} runs × {steps} steps: the page / the page and all its data, median of 5 | {:.1} ms / {:.1} ms |",
        median(html),
        median(all)
    );
    Ok(())
}

/// The export links of the compare page over runs 1..=n, each timed 5 times.
fn exports(agent: &ureq::Agent, url: &str, n: u64, steps: u64) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let runs = ids.join(",");
    let cases = [
        ("PNG, 1200 px wide", "compare.png", "image/png", false),
        ("SVG", "compare.svg", "image/svg+xml", false),
        (
            "SVG, gzip as a browser asks",
            "compare.svg",
            "image/svg+xml",
            true,
        ),
        (
            "CSV of the loss, 2,000 points",
            "compare.csv",
            "text/csv",
            false,
        ),
    ];
    for (what, file, kind, gzip) in cases {
        let link = format!("{url}/api/v1/{file}?runs={runs}");
        let (mut times, mut size) = (Vec::new(), 0);
        for _ in 0..5 {
            let t = Instant::now();
            let mut req = agent.get(&link);
            if gzip {
                req = req.header("Accept-Encoding", "gzip");
            }
            let mut resp = req.call()?;
            let got = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            anyhow::ensure!(got.starts_with(kind), "{file}: {got}");
            size = resp
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()?
                .len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| comparison of {n} runs × {steps} steps exported as {what} ({:.0} KB), median of 5 | {:.1} ms |",
            size as f64 / 1024.0,
            median(times)
        );
    }
    Ok(())
}
