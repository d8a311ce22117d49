//! Train a config without the keel CLI: `cargo run --release -p keel-trainer --example train --
//! configs/proxy-small.toml [steps] [server-url]`. Used for measurements.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use keel_trainer::{TrainOptions, train};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = args
        .first()
        .cloned()
        .unwrap_or_else(|| "configs/proxy-tiny.toml".into());
    let opts = TrainOptions {
        config: config.into(),
        steps: args.get(1).map(|s| s.parse()).transpose()?,
        server: args.get(2).cloned(),
        token: std::env::var("KEEL_TOKEN").ok(),
        device: std::env::var("KEEL_DEVICE").unwrap_or_else(|_| "cpu".into()),
        checkpoint_dir: Some(std::env::temp_dir().join("keel-example-checkpoints")),
        ..Default::default()
    };
    let summary = train(opts, Arc::new(AtomicBool::new(false)))?;
    eprintln!("{summary:?}");
    Ok(())
}
