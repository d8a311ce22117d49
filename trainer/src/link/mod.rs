//! The link between a trainer and a keel server, on threads of its own.
//!
//! The training loop hands records to a bounded queue with `try_send` and never waits on the
//! network. A sender thread batches step records into `POST /runs/{id}/steps` every ~100 ms
//! (or every 256 steps); when the server is away it appends them to a spill file and re-sends
//! them with backoff once the server answers again. A poller thread long-polls
//! `GET /runs/{id}/commands/pending` and hands new commands to the loop; command outcomes and
//! status changes travel back through the sender. If the queue is full (a stalled sender), the
//! loop keeps records in a local overflow list instead of blocking, and past
//! [`OVERFLOW_LIMIT`] writes the oldest steps to the outbox's overflow file: no step is ever
//! dropped. What cannot be delivered stays in the run's [`Outbox`] for [`sync`].

mod http;
mod outbox;
mod sender;
mod spill;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_protocol::{CommandOutcome, CommandRecord, IngestBatch, StatusReport, StepRecord};

pub use http::{Client, Sent};
pub use outbox::{Control, DeadLetter, Outbox};
use sender::Msg;
pub use sender::SendReport;
pub use spill::Spill;

/// Records the loop keeps in memory when the queue is full, before it writes the oldest
/// steps to the overflow file.
pub const OVERFLOW_LIMIT: usize = 10_000;
const QUEUE: usize = 4096;
/// How long the server may hold a command poll.
const POLL_WAIT_MS: u64 = 5_000;

/// What the loop sends to the server.
#[derive(Clone, Debug)]
pub enum Outbound {
    Step {
        branch: u32,
        record: StepRecord,
    },
    Outcome {
        command: i64,
        outcome: CommandOutcome,
    },
    Status(StatusReport),
}

pub struct Link {
    tx: SyncSender<Msg>,
    overflow: VecDeque<Outbound>,
    /// The loop's own file for steps past [`OVERFLOW_LIMIT`] (the sender folds it in).
    overflow_file: Spill,
    commands: Receiver<CommandRecord>,
    sender: JoinHandle<SendReport>,
    stop_polling: Arc<AtomicBool>,
}

impl Link {
    /// Start the sender and poller threads for the run of `outbox`. What an earlier process
    /// left in that outbox is re-sent first.
    pub fn spawn(base_url: &str, token: Option<String>, outbox: Outbox) -> Self {
        let run_id = outbox.run_id;
        let client = Client::new(base_url, token.clone(), Duration::from_secs(10));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let overflow_file = Spill::new(&outbox.overflow);
        let sender = sender::Sender::new(client, outbox);
        let sender = std::thread::Builder::new()
            .name("keel-link-send".into())
            .spawn(move || sender.run(rx))
            .expect("spawning the link sender thread");
        let (cmd_tx, commands) = mpsc::channel();
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poll_client = Client::new(
            base_url,
            token,
            Duration::from_millis(POLL_WAIT_MS + 10_000),
        );
        let stop = stop_polling.clone();
        std::thread::Builder::new()
            .name("keel-link-poll".into())
            .spawn(move || poll_commands(poll_client, run_id, cmd_tx, stop))
            .expect("spawning the link poller thread");
        Self {
            tx,
            overflow: VecDeque::new(),
            overflow_file,
            commands,
            sender,
            stop_polling,
        }
    }

    /// Queue a message without ever blocking.
    pub fn send(&mut self, msg: Outbound) {
        self.overflow.push_back(msg);
        while let Some(next) = self.overflow.pop_front() {
            match self.tx.try_send(Msg::Out(next)) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Out(back))) => {
                    self.overflow.push_front(back);
                    break;
                }
                Err(TrySendError::Full(Msg::Close(_)) | TrySendError::Disconnected(_)) => {
                    tracing::error!("the link sender thread is gone; dropping metrics");
                    self.overflow.clear();
                    return;
                }
            }
        }
        if self.overflow.len() > OVERFLOW_LIMIT {
            self.overflow_to_disk();
        }
    }

    /// Writes the overflow's steps to the overflow file, one batch per branch run, keeping
    /// the rare status reports and outcomes in memory (they are few, and must keep their
    /// order relative to each other only).
    fn overflow_to_disk(&mut self) {
        let mut kept = VecDeque::new();
        let mut batch: Option<IngestBatch> = None;
        let mut written = 0;
        for msg in self.overflow.drain(..) {
            match msg {
                Outbound::Step { branch, record } => match &mut batch {
                    Some(b) if b.branch == Some(branch) => b.steps.push(record),
                    _ => {
                        if let Some(b) = batch.replace(IngestBatch {
                            branch: Some(branch),
                            steps: vec![record],
                        }) {
                            written += b.steps.len();
                            if let Err(e) = self.overflow_file.append(&b) {
                                tracing::error!(error = %e, "cannot write the overflow file; {} steps lost", b.steps.len());
                            }
                        }
                    }
                },
                other => kept.push_back(other),
            }
        }
        if let Some(b) = batch {
            written += b.steps.len();
            if let Err(e) = self.overflow_file.append(&b) {
                tracing::error!(error = %e, "cannot write the overflow file; {} steps lost", b.steps.len());
            }
        }
        tracing::warn!(steps = written, file = %self.overflow_file.path().display(), "the link is behind: steps written to the overflow file");
        self.overflow = kept;
    }

    pub fn step(&mut self, branch: u32, record: StepRecord) {
        self.send(Outbound::Step { branch, record });
    }

    /// A command that arrived, if any (never waits).
    pub fn try_command(&self) -> Option<CommandRecord> {
        self.commands.try_recv().ok()
    }

    /// Wait up to `timeout` for a command (used while paused).
    pub fn wait_command(&self, timeout: Duration) -> Option<CommandRecord> {
        self.commands.recv_timeout(timeout).ok()
    }

    /// Flush everything: what the server does not take within `deadline` is spilled to disk.
    pub fn finish(mut self, deadline: Duration) -> SendReport {
        self.stop_polling.store(true, Ordering::Relaxed);
        // Push what overflowed, waiting now: the run is over, so blocking costs nothing.
        for msg in self.overflow.drain(..) {
            if self.tx.send(Msg::Out(msg)).is_err() {
                break;
            }
        }
        let _ = self.tx.send(Msg::Close(deadline));
        drop(self.tx);
        self.sender.join().unwrap_or_default()
    }
}

/// Re-sends what earlier processes left in the outboxes of `dir` (every run, or only `only`),
/// trying each for at most `patience` while the server is away. Per run: what happened.
pub fn sync(
    dir: &Path,
    base_url: &str,
    token: Option<String>,
    patience: Duration,
    skip: Option<i64>,
) -> anyhow::Result<Vec<(i64, SendReport)>> {
    let mut out = Vec::new();
    for run_id in Outbox::runs_in(dir)? {
        if Some(run_id) == skip {
            continue;
        }
        let client = Client::new(base_url, token.clone(), Duration::from_secs(10));
        let sender = sender::Sender::new(client, Outbox::new(dir, run_id));
        out.push((run_id, sender.close(patience)));
    }
    Ok(out)
}

/// The poller thread: long-poll, pass on commands not seen before, back off on errors.
fn poll_commands(
    client: Client,
    run_id: i64,
    tx: mpsc::Sender<CommandRecord>,
    stop: Arc<AtomicBool>,
) {
    let mut seen = HashSet::new();
    let mut backoff = Duration::from_millis(250);
    while !stop.load(Ordering::Relaxed) {
        // `after` makes the server wait for new commands instead of repeating the ones
        // handed over and not yet reported.
        let after = seen.iter().copied().max().unwrap_or(0);
        match client.pending_commands(run_id, after, POLL_WAIT_MS) {
            Ok(records) => {
                backoff = Duration::from_millis(250);
                let mut fresh = false;
                for rec in records {
                    if seen.insert(rec.id) {
                        fresh = true;
                        if tx.send(rec).is_err() {
                            return;
                        }
                    }
                }
                // The server keeps returning a command until its outcome arrives: don't spin
                // on ones already handed over.
                if !fresh {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(why) => {
                tracing::debug!(%why, "command poll failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
