//! `keel demo`: a server on a local SQLite file and a real proxy-model training run streaming
//! into it, so a fresh machine has something real to watch. Ctrl-C stops both.
//!
//! The demo is only worth something with its run, so a trainer that cannot start or dies is
//! reported at once — on stderr and at the top of the runs page — and the demo exits
//! non-zero, unless `--keep-serving` keeps the server up for a look around. A trainer that
//! finishes its steps leaves the server serving until Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::{DemoArgs, shutdown_on_signal};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (token, made) = crate::token_or_new(args.token)?;
    let mut config = keel_server::Config::new(args.db, token.clone());
    config.addr = args.addr;
    config.launch = crate::launch::config(
        args.grids,
        args.max_trainers,
        keel_server::launches::Engine::Local,
    )?;
    let notices = config.notices.clone();
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
    if made {
        println!("operator token (KEEL_TOKEN): {token}");
    } else {
        println!("operator token: the one you gave (KEEL_TOKEN or --token)");
    }
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
    // Beside it, the spike drill: a tiny run fed corrupted batches, whose rule rewinds past
    // them, so a new user sees a spike caught and healed in the first minute.
    // Its checkpoints are the demo's scratch: a folder left by an earlier demo would hold
    // another run's checkpoints, newer by step, and leave this one's rewind nothing to go to.
    let drill_dir = std::path::PathBuf::from("checkpoints/demo-spike-drill");
    let _ = std::fs::remove_dir_all(&drill_dir);
    let drill = keel_trainer::TrainOptions {
        config: "spike-drill".into(),
        run_name: Some("demo-spike-drill".into()),
        checkpoint_dir: Some(drill_dir),
        steps: None,
        ..opts.clone()
    };
    let drill_stop = stop.clone();
    let drill_notices = notices.clone();
    let drill = tokio::task::spawn_blocking(move || {
        if let Err(e) = keel_trainer::train(drill, drill_stop) {
            let why = format!("the demo's spike drill failed: {e:#}");
            eprintln!("keel demo: {why}");
            drill_notices.push(why);
        }
    });
    let flag = stop.clone();
    let mut trainer = tokio::task::spawn_blocking(move || keel_trainer::train(opts, flag));
    let failure = tokio::select! {
        // On Ctrl-C the trainer stops first, at its next step boundary, and reports to a
        // server that is still there; then the server stops.
        () = signal.cancelled() => {
            stop.store(true, Ordering::SeqCst);
            match trained(trainer.await) {
                Ok(steps) => eprintln!("the demo run trained {steps} steps"),
                Err(e) => eprintln!("the demo run stopped: {e:#}"),
            }
            None
        }
        joined = &mut trainer => match trained(joined) {
            Ok(steps) => {
                eprintln!("the demo run trained its {steps} steps; serving until Ctrl-C");
                signal.cancelled().await;
                None
            }
            Err(e) => Some(e),
        },
    };
    // The spike drill stops at its next step boundary and reports to a server still there;
    // then the server stops.
    stop.store(true, Ordering::SeqCst);
    let _ = drill.await;
    let Some(e) = failure else {
        server_stop.cancel();
        return server.await.context("the server task")?;
    };
    let why = format!("the demo's trainer failed: {e:#}");
    eprintln!("keel demo: {why}");
    notices.push(why);
    if args.keep_serving {
        eprintln!("keel demo: --keep-serving: the server stays up until Ctrl-C");
        signal.cancelled().await;
    }
    server_stop.cancel();
    server.await.context("the server task")??;
    // The reason is on stderr already.
    anyhow::bail!("the demo's trainer failed")
}

/// The steps a trainer thread trained, or why it did not.
fn trained(
    joined: Result<anyhow::Result<keel_trainer::TrainSummary>, tokio::task::JoinError>,
) -> anyhow::Result<u64> {
    let summary = joined.map_err(|_| anyhow::anyhow!("the trainer panicked"))??;
    Ok(summary.steps)
}
