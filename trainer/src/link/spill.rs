//! The spill file: step batches the server could not take yet, one JSON `IngestBatch` a line.
//!
//! Appends go straight to disk so a crash loses nothing that was spilled. Re-sending reads the
//! file, posts batches in order until one fails, and rewrites the file with what is left (or
//! removes it). Ingest is idempotent per (run, branch, step), so a batch that reached the server
//! just before a failure and is sent again is harmless.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keel_protocol::IngestBatch;

pub struct Spill {
    path: PathBuf,
}

impl Spill {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether anything is waiting to be re-sent.
    pub fn is_empty(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0)
    }

    pub fn append(&self, batch: &IngestBatch) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening spill file {}", self.path.display()))?;
        let mut line = serde_json::to_vec(batch)?;
        line.push(b'\n');
        f.write_all(&line)?;
        Ok(())
    }

    /// Every spilled batch, oldest first. A torn last line (a crash mid-write) is skipped.
    pub fn read(&self) -> Result<Vec<IngestBatch>> {
        read_lines(&self.path)
    }

    /// Replace the file's contents with `rest` (removing it when empty).
    pub fn rewrite(&self, rest: &[IngestBatch]) -> Result<()> {
        write_lines(&self.path, rest)
    }
}

/// Every readable JSON line of `path`, in order (none when it does not exist); an unreadable
/// line (a torn last one, after a crash mid-write) is skipped.
pub(super) fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let Ok(f) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        match serde_json::from_str(&line) {
            Ok(v) => out.push(v),
            Err(_) if line.trim().is_empty() => {}
            Err(_) => tracing::warn!(file = %path.display(), "skipping an unreadable line"),
        }
    }
    Ok(out)
}

/// Replaces `path` with one JSON line per item, atomically (a file beside it, synced, then
/// renamed over it); no items remove the file.
pub(super) fn write_lines<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    if items.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    for item in items {
        let mut line = serde_json::to_vec(item)?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
