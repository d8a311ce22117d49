//! The link between a trainer and a keel server, on threads of its own.
//!
//! The training loop hands records to a bounded queue with `try_send` and never waits on the
//! network. A sender thread batches step records into `POST /runs/{id}/steps` every ~100 ms
//! (or every 256 steps); when the server is away it appends them to a spill file and re-sends
//! them with backoff once the server answers again. A poller thread long-polls
//! `GET /runs/{id}/commands/pending` and hands new commands to the loop; command outcomes and
//! status changes travel back through the sender. If the queue is full (a stalled sender), the
//! loop keeps records in a local overflow list instead of blocking.

mod http;
mod sender;
mod spill;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_protocol::{CommandOutcome, CommandRecord, StatusReport, StepRecord};

pub use http::{Client, Sent};
use sender::Msg;
pub use sender::SendReport;
pub use spill::Spill;

/// Records the loop keeps locally when the queue is full, before dropping the oldest.
const OVERFLOW_LIMIT: usize = 100_000;
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
    commands: Receiver<CommandRecord>,
    sender: JoinHandle<SendReport>,
    stop_polling: Arc<AtomicBool>,
}

impl Link {
    /// Start the sender and poller threads for run `run_id`. Spilled batches left by an earlier
    /// process at `spill_path` are re-sent first.
    pub fn spawn(base_url: &str, token: Option<String>, run_id: i64, spill_path: PathBuf) -> Self {
        let client = Client::new(base_url, token.clone(), Duration::from_secs(10));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let sender = sender::Sender::new(client, run_id, Spill::new(&spill_path));
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
            self.overflow.pop_front();
            tracing::warn!("link overflow full: dropped the oldest record");
        }
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
