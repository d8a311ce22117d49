//! `keel demo`: a server on a local SQLite file and a real proxy-model training run streaming
//! into it, so a fresh machine has something real to watch. Ctrl-C stops both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::{DemoArgs, shutdown_on_signal};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let token = keel_server::auth::new_token()?;
    let mut config = keel_server::Config::new(args.db, token.clone());
    config.addr = args.addr;
    config.launch = crate::launch::config(args.grids, args.max_trainers)?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| {
            format!(
                "listening on {} (is another keel running? try --addr 127.0.0.1:0)",
                args.addr
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    let signal = shutdown_on_signal();
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(keel_server::serve(config, listener, server_stop.clone()));
    println!("keel demo: open {url}");
    println!("operator token (KEEL_TOKEN): {token}");
    println!("to steer the run, sign in at {url}/login with that token");
    let stop = Arc::new(AtomicBool::new(false));
    let opts = keel_trainer::TrainOptions {
        config: args.config,
        server: Some(url),
        token: Some(token),
        device: "cpu".into(),
        steps: args.steps,
        run_name: Some("demo".into()),
        group: Some("demo".into()),
        ..Default::default()
    };
    let flag = stop.clone();
    let trainer = std::thread::spawn(move || keel_trainer::train(opts, flag));
    // On Ctrl-C the trainer stops first, at its next step boundary, and reports to a server
    // that is still there; then the server stops.
    signal.cancelled().await;
    stop.store(true, Ordering::SeqCst);
    let trained = tokio::task::spawn_blocking(move || trainer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the trainer panicked"))?;
    match trained {
        Ok(summary) => eprintln!("the demo run trained {} steps", summary.steps),
        Err(e) => eprintln!("the demo run stopped: {e:#}"),
    }
    server_stop.cancel();
    server.await.context("the server task")?
}
