//! `keel sync DIR`: re-send what trainers could not deliver — the spilled steps, status
//! reports and command outcomes in the outboxes of a checkpoint folder — to a keel server.
//! Dead letters (batches the server refused) are listed, never re-sent.

use std::path::PathBuf;
use std::time::Duration;

use keel_trainer::link::{self, Outbox};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// A checkpoint folder (`checkpoints/<run name>`) with `spill-run-*.jsonl` files.
    dir: PathBuf,
    /// Base URL of the keel server the runs belong to.
    #[arg(long, env = "KEEL_SERVER")]
    server: String,
    /// The server's operator token.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: String,
    /// How long to keep trying a server that does not answer, in seconds, per run.
    #[arg(long, default_value_t = 30)]
    patience: u64,
}

pub fn run(args: SyncArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a folder (give the checkpoint folder of the run)",
        args.dir.display()
    );
    let runs = Outbox::runs_in(&args.dir)?;
    if runs.is_empty() {
        eprintln!("nothing to send: no spill files in {}", args.dir.display());
    }
    let patience = Duration::from_secs(args.patience);
    let reports = link::sync(&args.dir, &args.server, Some(args.token), patience, None)?;
    let mut undelivered = 0;
    for (run, r) in &reports {
        eprintln!(
            "run {run}: {} steps sent, {} refused, {} still to send, {} status reports or outcomes still to send",
            r.steps_sent, r.steps_refused, r.steps_spilled, r.control_left
        );
        if r.steps_refused > 0 {
            eprintln!(
                "  refused batches, with the server's reasons: {}",
                r.refused_file.display()
            );
        }
        undelivered += r.steps_refused + r.steps_spilled + r.control_left;
    }
    anyhow::ensure!(
        undelivered == 0,
        "not everything was delivered; what is left stays in {} (run keel sync again once the server answers)",
        args.dir.display()
    );
    Ok(())
}
