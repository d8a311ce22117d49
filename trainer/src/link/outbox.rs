//! A run's undelivered records on disk, in its checkpoint folder, so that nothing a trainer
//! measured is lost to a server that was away, slow or refusing:
//!
//! - `spill-run-<id>.jsonl`: step batches the server could not take yet (see [`Spill`]).
//! - `spill-run-<id>.overflow.jsonl`: steps the training loop wrote itself when the sender
//!   fell more than [`super::OVERFLOW_LIMIT`] records behind (the loop never waits on the
//!   network, and never drops a step). Folded into the spill when a sender starts or closes.
//! - `spill-run-<id>.control.jsonl`: status reports and command outcomes still unsent when the
//!   trainer exited (its final `finished` or `failed` among them).
//! - `refused-run-<id>.jsonl`: dead letters: batches the server refused (4xx), each with the
//!   status and the reason it gave, kept for a person to read; never re-sent by keel.
//!
//! `keel sync DIR`, and the next `keel train` with the same checkpoint folder, re-send the
//! first three.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keel_protocol::{CommandOutcome, IngestBatch, StatusReport};
use serde::{Deserialize, Serialize};

use super::spill::{Spill, read_lines, write_lines};

/// The files of one run's outbox.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub run_id: i64,
    pub spill: PathBuf,
    pub overflow: PathBuf,
    pub control: PathBuf,
    pub refused: PathBuf,
}

/// A control message as kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    Outcome {
        command: i64,
        outcome: CommandOutcome,
    },
    Status {
        report: StatusReport,
    },
}

/// One refused batch: what the server said, and the steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Unix seconds of the refusal.
    pub at: f64,
    pub status: u16,
    pub reason: String,
    pub batch: IngestBatch,
}

impl Outbox {
    pub fn new(dir: &Path, run_id: i64) -> Outbox {
        let file = |name: String| dir.join(name);
        Outbox {
            run_id,
            spill: file(format!("spill-run-{run_id}.jsonl")),
            overflow: file(format!("spill-run-{run_id}.overflow.jsonl")),
            control: file(format!("spill-run-{run_id}.control.jsonl")),
            refused: file(format!("refused-run-{run_id}.jsonl")),
        }
    }

    /// The runs with something to re-send in `dir`, in id order.
    pub fn runs_in(dir: &Path) -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_prefix("spill-run-"))
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse().ok());
            if let Some(id) = id
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Moves the loop's overflow steps into the spill, so that they are sent with it.
    pub fn fold_overflow(&self) -> Result<()> {
        let overflow = Spill::new(&self.overflow);
        if overflow.is_empty() {
            return Ok(());
        }
        let spill = Spill::new(&self.spill);
        for batch in overflow.read()? {
            spill.append(&batch)?;
        }
        overflow.rewrite(&[])
    }

    pub fn read_control(&self) -> Result<Vec<Control>> {
        read_lines(&self.control)
    }

    /// Replaces the unsent control messages with `left` (none: the file goes).
    pub fn write_control(&self, left: &[Control]) -> Result<()> {
        write_lines(&self.control, left)
    }

    /// Keeps a refused batch with the server's answer.
    pub fn dead_letter(&self, status: u16, reason: &str, batch: &IngestBatch) -> Result<()> {
        let letter = DeadLetter {
            at: crate::trainer::unix_now(),
            status,
            reason: reason.to_owned(),
            batch: batch.clone(),
        };
        if let Some(dir) = self.refused.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.refused)
            .with_context(|| format!("opening {}", self.refused.display()))?;
        let mut line = serde_json::to_vec(&letter)?;
        line.push(b'\n');
        f.write_all(&line)?;
        Ok(())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        read_lines(&self.refused)
    }
}
