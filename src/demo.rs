//! `keel demo`: a server on a local SQLite file with a run streaming into it, so a fresh
//! machine has something real to look at. Ctrl-C stops both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use keel_protocol::{IngestBatch, Metric, RunSpec, StepRecord};

use crate::shutdown_on_signal;

pub async fn run(addr: SocketAddr, db: PathBuf) -> anyhow::Result<()> {
    let token = keel_server::auth::new_token()?;
    let mut config = keel_server::Config::new(db, token.clone());
    config.addr = addr;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("listening on {addr} (is another keel running? try --addr 127.0.0.1:0)")
    })?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = shutdown_on_signal();
    let server = tokio::spawn(keel_server::serve(config, listener, shutdown.clone()));
    println!("keel demo: open {url}");
    println!("operator token (KEEL_TOKEN): {token}");
    let feeder_stop = shutdown.clone();
    let feeder = tokio::task::spawn_blocking(move || synthetic_run(&url, &token, &feeder_stop));
    let result = server.await.context("the server task")?;
    shutdown.cancel();
    if let Err(e) = feeder.await.context("the demo run")? {
        tracing::warn!(error = ?e, "the demo run stopped");
    }
    result
}

/// A synthetic run in the shape of a real one: a falling loss per source, and per-layer
/// statistics whose variance slowly grows with depth.
fn synthetic_run(
    url: &str,
    token: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    const LAYERS: u32 = 8;
    let agent = ureq::Agent::new_with_defaults();
    let auth = format!("Bearer {token}");
    let spec = RunSpec {
        name: "demo-synthetic".into(),
        group: Some("demo".into()),
        tags: vec!["synthetic".into()],
        config: serde_json::json!({"model": "synthetic", "layers": LAYERS}),
        layers: LAYERS,
        variant: None,
        protocol: Some(keel_protocol::PROTOCOL_VERSION),
    };
    let created: keel_protocol::CreatedRun = agent
        .post(&format!("{url}/api/v1/runs"))
        .header("Authorization", &auth)
        .send_json(&spec)?
        .body_mut()
        .read_json()?;
    let mut step = 0u64;
    while !stop.is_cancelled() {
        let record = synthetic_step(step, LAYERS);
        let batch = IngestBatch {
            branch: None,
            steps: vec![record],
        };
        agent
            .post(&format!("{url}/api/v1/runs/{}/steps", created.id))
            .header("Authorization", &auth)
            .send_json(&batch)?;
        step += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn synthetic_step(step: u64, layers: u32) -> StepRecord {
    let t = step as f64;
    let noise = ((t * 12.9898).sin() * 43758.5453).fract() * 0.05;
    let loss = 1.5 + 4.0 * (-t / 300.0).exp() + noise;
    let mut scalars = std::collections::BTreeMap::new();
    scalars.insert("loss".into(), Metric(loss));
    scalars.insert("loss/arithmetic".into(), Metric(loss * 0.6));
    scalars.insert("loss/code".into(), Metric(loss * 0.9));
    scalars.insert("loss/prose".into(), Metric(loss * 1.2));
    scalars.insert("lr".into(), Metric(0.01 * (t / 100.0).min(1.0)));
    scalars.insert("grad_norm".into(), Metric(0.5 + noise * 4.0));
    let stat = |scale: f64| -> Vec<Metric> {
        (0..layers)
            .map(|l| Metric(scale * (1.0 + l as f64 * t / 2000.0) * (1.0 + noise)))
            .collect()
    };
    let mut layers_map = std::collections::BTreeMap::new();
    layers_map.insert("hidden_var".into(), stat(1.0));
    layers_map.insert("attn_logit_max".into(), stat(4.0));
    layers_map.insert("grad_norm".into(), stat(0.1));
    StepRecord {
        step,
        time: Some(keel_server::storage::now()),
        tokens: Some((step + 1) * 8 * 128),
        scalars,
        layers: layers_map,
    }
}
