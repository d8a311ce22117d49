//! The sender thread: batches outbound messages, posts them, spills what the server cannot
//! take, and re-sends the spill with backoff.
//!
//! Invariant: a step record is either acknowledged by the server (2xx), refused by it (4xx:
//! kept as a dead letter with the server's reason), or on disk in the spill file. Outcomes
//! and status reports are small and rare, so they wait in memory and are retried until the
//! link closes; what is left then goes to the outbox's control file (see [`Outbox`]).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use keel_protocol::{IngestBatch, StepRecord};

use super::Outbound;
use super::http::{Client, Sent};
use super::outbox::{Control, Outbox};
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
    /// Steps refused by the server (4xx), kept as dead letters in `refused_file`.
    pub steps_refused: u64,
    /// Steps still in the spill file when the link closed.
    pub steps_spilled: u64,
    /// Status reports and outcomes still unsent when it closed, kept in the control file.
    pub control_left: u64,
    pub spill_file: PathBuf,
    pub refused_file: PathBuf,
}

pub(super) struct Sender {
    client: Client,
    run_id: i64,
    outbox: Outbox,
    spill: Spill,
    pending: Vec<(u32, StepRecord)>,
    control: VecDeque<Control>,
    /// Whether the control file holds messages (from an earlier process) not yet sent.
    control_on_disk: bool,
    /// While set, the server is considered away: new batches go straight to the spill.
    retry_at: Option<Instant>,
    backoff: Duration,
    report: SendReport,
}

impl Sender {
    /// A sender for the run of `outbox`. What an earlier process left there (overflow steps,
    /// unsent status reports and outcomes) is sent first.
    pub(super) fn new(client: Client, outbox: Outbox) -> Self {
        if let Err(e) = outbox.fold_overflow() {
            tracing::error!(error = %e, "cannot fold the overflow file into the spill");
        }
        let control: VecDeque<Control> = outbox.read_control().unwrap_or_default().into();
        Self {
            client,
            run_id: outbox.run_id,
            spill: Spill::new(&outbox.spill),
            control_on_disk: !control.is_empty(),
            report: SendReport {
                spill_file: outbox.spill.clone(),
                refused_file: outbox.refused.clone(),
                ..SendReport::default()
            },
            outbox,
            pending: Vec::new(),
            control,
            retry_at: None,
            backoff: Duration::from_millis(250),
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
            Outbound::Outcome { command, outcome } => self
                .control
                .push_back(Control::Outcome { command, outcome }),
            Outbound::Status(report) => self.control.push_back(Control::Status { report }),
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
                self.refused(code, &why, &batch);
                true
            }
            Sent::Retry(why, after) => {
                self.mark_away(&why, after);
                self.spill_batch(&batch);
                false
            }
        }
    }

    /// A refused batch becomes a dead letter: retrying cannot help, but a person can read it.
    fn refused(&mut self, code: u16, why: &str, batch: &IngestBatch) {
        let n = batch.steps.len() as u64;
        tracing::error!(code, %why, steps = n, file = %self.outbox.refused.display(), "the server refused a step batch; kept as a dead letter");
        self.report.steps_refused += n;
        if let Err(e) = self.outbox.dead_letter(code, why, batch) {
            tracing::error!(error = %e, "cannot write the dead letter; {n} refused steps lost");
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
                Sent::Refused(code, why) => self.refused(code, &why, &batch),
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
                Control::Outcome { command, outcome } => self.client.post(
                    &format!("/api/v1/runs/{}/commands/{command}/outcome", self.run_id),
                    outcome,
                ),
                Control::Status { report } => self
                    .client
                    .post(&format!("/api/v1/runs/{}/status", self.run_id), report),
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
        // Everything an earlier process left unsent has now gone too.
        if std::mem::take(&mut self.control_on_disk) {
            self.keep_control();
        }
    }

    /// Writes the unsent control messages to the outbox (removing its file when none).
    fn keep_control(&self) {
        let left: Vec<Control> = self.control.iter().cloned().collect();
        if let Err(e) = self.outbox.write_control(&left) {
            tracing::error!(error = %e, "cannot write the control file; {} messages lost", left.len());
        }
    }

    /// Final flush: keep trying until `deadline`, then leave steps in the spill file and
    /// status reports and outcomes in the control file.
    pub(super) fn close(mut self, deadline: Duration) -> SendReport {
        let end = Instant::now() + deadline;
        if let Err(e) = self.outbox.fold_overflow() {
            tracing::error!(error = %e, "cannot fold the overflow file into the spill");
        }
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
        self.report.control_left = self.control.len() as u64;
        if !self.control.is_empty() {
            self.keep_control();
        }
        self.report
    }
}
