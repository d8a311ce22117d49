//! The sender thread: batches outbound messages, posts them, spills what the server cannot
//! take, and re-sends the spill with backoff.
//!
//! Invariant: a step record is either acknowledged by the server (2xx), refused by it (4xx:
//! logged and dropped), or on disk in the spill file. Outcomes and status reports are small and
//! rare, so they wait in memory and are retried until the link closes.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use keel_protocol::{IngestBatch, StepRecord};

use super::Outbound;
use super::http::{Client, Sent};
use super::spill::Spill;

/// Post step batches at least this often (the live view's latency budget is 250 ms).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// At most this many steps per request.
const BATCH_MAX: usize = 256;

pub(super) enum Msg {
    Out(Outbound),
    /// Flush and exit, trying the server for at most this long.
    Close(Duration),
}

/// What happened to the records during the link's life.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendReport {
    /// Steps the server acknowledged (including re-sent ones).
    pub steps_sent: u64,
    /// Steps refused by the server (4xx) and dropped.
    pub steps_refused: u64,
    /// Steps still in the spill file when the link closed.
    pub steps_spilled: u64,
}

pub(super) struct Sender {
    client: Client,
    run_id: i64,
    spill: Spill,
    pending: Vec<(u32, StepRecord)>,
    control: VecDeque<Outbound>,
    /// While set, the server is considered away: new batches go straight to the spill.
    retry_at: Option<Instant>,
    backoff: Duration,
    report: SendReport,
}

impl Sender {
    pub(super) fn new(client: Client, run_id: i64, spill: Spill) -> Self {
        Self {
            client,
            run_id,
            spill,
            pending: Vec::new(),
            control: VecDeque::new(),
            retry_at: None,
            backoff: Duration::from_millis(250),
            report: SendReport::default(),
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) -> SendReport {
        let mut last_flush = Instant::now();
        loop {
            match rx.recv_timeout(FLUSH_EVERY / 2) {
                Ok(Msg::Out(m)) => self.accept(m),
                Ok(Msg::Close(deadline)) => return self.close(deadline),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.close(Duration::from_secs(5)),
            }
            // A command outcome or status goes out at once (with the steps before it, so
            // "applied at step N" arrives after step N); steps alone wait for the batch.
            let urgent = !self.control.is_empty() && !self.server_away();
            if urgent || self.pending.len() >= BATCH_MAX || last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    fn accept(&mut self, m: Outbound) {
        match m {
            Outbound::Step { branch, record } => self.pending.push((branch, record)),
            other => self.control.push_back(other),
        }
    }

    /// Send or spill the pending steps, then retry the spill and the control messages.
    fn flush(&mut self) {
        for batch in self.take_batches() {
            if self.server_away() {
                self.spill_batch(&batch);
            } else {
                self.post_batch(batch);
            }
        }
        if !self.server_away() {
            self.resend_spill();
        }
        if !self.server_away() {
            self.send_control();
        }
    }

    /// Pending steps as batches of one branch each, at most `BATCH_MAX` long, in order.
    fn take_batches(&mut self) -> Vec<IngestBatch> {
        let mut out: Vec<IngestBatch> = Vec::new();
        for (branch, record) in self.pending.drain(..) {
            match out.last_mut() {
                Some(b) if b.branch == Some(branch) && b.steps.len() < BATCH_MAX => {
                    b.steps.push(record)
                }
                _ => out.push(IngestBatch {
                    branch: Some(branch),
                    steps: vec![record],
                }),
            }
        }
        out
    }

    fn server_away(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// Holds sending back: for the wait the server asked for (it is busy, not gone), else
    /// for a backoff that doubles up to 5 s.
    fn mark_away(&mut self, why: &str, asked: Option<Duration>) {
        let wait = asked.unwrap_or(self.backoff);
        tracing::warn!(%why, wait_ms = wait.as_millis() as u64, "keel server unavailable; spilling");
        self.retry_at = Some(Instant::now() + wait);
        if asked.is_none() {
            self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn mark_back(&mut self) {
        self.retry_at = None;
        self.backoff = Duration::from_millis(250);
    }

    /// Post one batch; `false` when the server is away (the batch is then spilled).
    fn post_batch(&mut self, batch: IngestBatch) -> bool {
        let n = batch.steps.len() as u64;
        match self
            .client
            .post(&format!("/api/v1/runs/{}/steps", self.run_id), &batch)
        {
            Sent::Ok(_) => {
                self.mark_back();
                self.report.steps_sent += n;
                true
            }
            Sent::Refused(code, why) => {
                tracing::error!(code, %why, steps = n, "the server refused a step batch; dropped");
                self.report.steps_refused += n;
                true
            }
            Sent::Retry(why, after) => {
                self.mark_away(&why, after);
                self.spill_batch(&batch);
                false
            }
        }
    }

    fn spill_batch(&mut self, batch: &IngestBatch) {
        if let Err(e) = self.spill.append(batch) {
            tracing::error!(error = %e, "cannot write the spill file; {} steps lost", batch.steps.len());
        }
    }

    /// Re-send spilled batches in order; stop at the first that fails and keep the rest.
    fn resend_spill(&mut self) {
        if self.spill.is_empty() {
            return;
        }
        let batches = match self.spill.read() {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "cannot read the spill file"),
        };
        let mut rest = batches.into_iter();
        for batch in rest.by_ref() {
            let n = batch.steps.len() as u64;
            match self
                .client
                .post(&format!("/api/v1/runs/{}/steps", self.run_id), &batch)
            {
                Sent::Ok(_) => self.report.steps_sent += n,
                Sent::Refused(code, why) => {
                    tracing::error!(code, %why, "the server refused a spilled batch; dropped");
                    self.report.steps_refused += n;
                }
                Sent::Retry(why, after) => {
                    self.mark_away(&why, after);
                    let left: Vec<IngestBatch> = std::iter::once(batch).chain(rest).collect();
                    return self.rewrite_spill(&left);
                }
            }
        }
        self.mark_back();
        self.rewrite_spill(&[]);
    }

    fn rewrite_spill(&self, rest: &[IngestBatch]) {
        if let Err(e) = self.spill.rewrite(rest) {
            tracing::error!(error = %e, "cannot rewrite the spill file");
        }
    }

    /// Outcomes and status reports, in order; a retryable failure keeps the rest queued.
    fn send_control(&mut self) {
        while let Some(msg) = self.control.pop_front() {
            let sent = match &msg {
                Outbound::Outcome { command, outcome } => self.client.post(
                    &format!("/api/v1/runs/{}/commands/{command}/outcome", self.run_id),
                    outcome,
                ),
                Outbound::Status(report) => self
                    .client
                    .post(&format!("/api/v1/runs/{}/status", self.run_id), report),
                Outbound::Step { .. } => unreachable!("steps are never queued as control"),
            };
            match sent {
                Sent::Ok(_) => {}
                Sent::Refused(code, why) => {
                    tracing::warn!(code, %why, "the server refused {msg:?}")
                }
                Sent::Retry(why, after) => {
                    self.mark_away(&why, after);
                    self.control.push_front(msg);
                    return;
                }
            }
        }
    }

    /// Final flush: keep trying until `deadline`, then leave steps in the spill file.
    fn close(mut self, deadline: Duration) -> SendReport {
        let end = Instant::now() + deadline;
        self.flush();
        while (!self.spill.is_empty() || !self.control.is_empty()) && Instant::now() < end {
            std::thread::sleep(
                Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
            );
            if !self.server_away() {
                self.flush();
            }
        }
        self.report.steps_spilled = self
            .spill
            .read()
            .map_or(0, |b| b.iter().map(|b| b.steps.len() as u64).sum());
        self.report
    }
}
