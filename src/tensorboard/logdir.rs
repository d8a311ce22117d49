//! A TensorBoard log directory as runs: every directory holding event files (a name with
//! `tfevents` in it, as TensorBoard's own rule) is one run, the files in it read in name
//! order — which is creation order, as writers put the time in the name — each from where
//! the last read of it stopped.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::fold::{Folding, Key};
use super::proto::{Data, Event};
use super::record::{self, Scan};
use super::steps::Steps;
use super::{Notes, Tally};

/// The largest step the server takes.
const MAX_STEP: u64 = 1_000_000_000_000;

/// The directories under `logdir` (itself included) that hold event files, sorted.
pub fn run_dirs(logdir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![logdir.to_owned()];
    while let Some(dir) = todo.pop() {
        let mut events = false;
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            // Symbolic links to directories are not followed: they may loop.
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            } else {
                events |= is_event_file(&entry.path());
            }
        }
        if events {
            found.push(dir);
        }
    }
    found.sort();
    Ok(found)
}

fn is_event_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str());
    name.is_some_and(|n| n.contains("tfevents")) && path.is_file()
}

/// The event files of one run directory, by name.
fn event_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if is_event_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The run name of `dir`: `name` (`--name`) or else the directory's path relative to
/// `logdir`, `/`-separated, or `logdir`'s own name when `dir` is `logdir`; with `--name` and
/// a run below `logdir`, `<name>/<relative path>`.
pub fn run_name(logdir: &Path, dir: &Path, name: Option<&str>) -> String {
    let relative = dir.strip_prefix(logdir).unwrap_or(dir);
    let relative: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match (name, relative.is_empty()) {
        (Some(name), true) => name.to_owned(),
        (Some(name), false) => format!("{name}/{}", relative.join("/")),
        (None, false) => relative.join("/"),
        (None, true) => std::fs::canonicalize(logdir)
            .ok()
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tensorboard".into()),
    }
}

/// How far one event file has been read.
struct EventFile {
    path: PathBuf,
    scan: Scan,
}

/// One run directory and what has been read of it.
pub struct RunDir {
    pub path: PathBuf,
    pub name: String,
    files: Vec<EventFile>,
    pub steps: Steps,
    pub tally: Tally,
    pub notes: Notes,
    /// The keel run it goes to: id and layer count, once known.
    pub run: Option<(i64, u32)>,
}

impl RunDir {
    pub fn new(path: PathBuf, name: String) -> Self {
        RunDir {
            notes: Notes::new(&name),
            path,
            name,
            files: Vec::new(),
            steps: Steps::default(),
            tally: Tally::default(),
            run: None,
        }
    }

    /// The event files found so far.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Whether a file ends in a record still being written.
    pub fn writing(&self) -> bool {
        self.files.iter().any(|f| f.scan.partial)
    }

    /// Reads the records appended since the last read, new files included; whether there
    /// were any.
    pub fn read(&mut self, folding: &mut Folding) -> anyhow::Result<bool> {
        for path in event_files(&self.path)? {
            if !self.files.iter().any(|f| f.path == path) {
                let scan = Scan::default();
                self.files.push(EventFile { path, scan });
            }
        }
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut fresh = false;
        let RunDir {
            files,
            steps,
            tally,
            notes,
            ..
        } = self;
        for file in files.iter_mut() {
            let len = std::fs::metadata(&file.path).map_or(0, |m| m.len());
            if len <= file.scan.end {
                continue;
            }
            let scan = record::scan_file(&file.path, file.scan.end, |data| {
                let event = Event::decode(data)?;
                absorb(event, folding, steps, tally, notes);
                Ok(())
            })?;
            fresh |= scan.end > file.scan.end;
            file.scan = scan;
        }
        Ok(fresh)
    }

    /// A line for the end: a file that ends in a record cut short.
    pub fn note_partial_files(&mut self) {
        for f in self.files.iter().filter(|f| f.scan.partial) {
            let msg = format!(
                "{} ends in a partial record after byte {} (still being written?); it is left out",
                f.path.display(),
                f.scan.end
            );
            self.notes
                .once(format!("partial:{}", f.path.display()), msg);
        }
    }
}

/// Adds an event's values to the steps being assembled.
fn absorb(
    event: Event,
    folding: &mut Folding,
    steps: &mut Steps,
    tally: &mut Tally,
    notes: &mut Notes,
) {
    if event.values.is_empty() {
        return;
    }
    let step = u64::try_from(event.step).ok().filter(|s| *s <= MAX_STEP);
    let Some(step) = step else {
        tally.refused += event.values.len() as u64;
        let why = format!("step {} is outside keel's steps (0 to 10¹²)", event.step);
        notes.once("step", format!("{why}: such steps are left out"));
        return;
    };
    for value in event.values {
        match value.data {
            Data::Other(kind) => {
                tally.skipped += 1;
                let why = format!("skipping `{kind}` data (such as `{}`)", value.tag);
                notes.once(
                    format!("kind:{kind}"),
                    format!("{why}: only scalars are imported"),
                );
            }
            Data::Scalar(x) => match folding.key(&value.tag) {
                Key::Refused(why) => {
                    tally.refused += 1;
                    notes.once(format!("tag:{}", value.tag), why);
                }
                Key::Skipped => tally.excluded += 1,
                key => steps.add(step, event.wall_time, key, x, tally, notes),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::encode::{event, simple};
    use super::super::record::frame;
    use super::*;

    #[test]
    fn run_directories_are_found_at_any_depth_and_named_by_their_relative_path() {
        let root = tempfile::tempdir().unwrap();
        let logdir = root.path().join("tb");
        for dir in ["", "a", "b/seed1", "c"] {
            std::fs::create_dir_all(logdir.join(dir)).unwrap();
        }
        for file in [
            "events.out.tfevents.1.h",
            "a/events.out.tfevents.2.h",
            "b/seed1/x.tfevents",
        ] {
            std::fs::write(logdir.join(file), b"").unwrap();
        }
        std::fs::write(logdir.join("c/notes.txt"), b"").unwrap();
        let dirs = run_dirs(&logdir).unwrap();
        let names: Vec<String> = dirs.iter().map(|d| run_name(&logdir, d, None)).collect();
        assert_eq!(names, ["tb", "a", "b/seed1"]);
        let named: Vec<String> = dirs
            .iter()
            .map(|d| run_name(&logdir, d, Some("x")))
            .collect();
        assert_eq!(named, ["x", "x/a", "x/b/seed1"]);
    }

    #[test]
    fn a_file_is_read_on_from_where_a_partial_record_stopped_the_last_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.1.host");
        let one = frame(&event(1.0, 1, &[simple("loss", 2.0)]));
        let two = frame(&event(2.0, 2, &[simple("loss", 1.5)]));
        std::fs::write(&path, [one.clone(), two[..7].to_vec()].concat()).unwrap();

        let mut run = RunDir::new(dir.path().to_owned(), "r".into());
        let mut folding = Folding::new(None, None);
        assert!(run.read(&mut folding).unwrap());
        assert!(run.writing());
        assert_eq!(run.steps.max_step, Some(1));
        assert!(!run.read(&mut folding).unwrap(), "nothing new");

        std::fs::write(&path, [one, two].concat()).unwrap();
        assert!(run.read(&mut folding).unwrap());
        assert!(!run.writing());
        let records = run.steps.take(None, 1, &mut run.tally, &mut run.notes);
        let losses: Vec<f64> = records.iter().map(|r| r.scalars["loss"].get()).collect();
        assert_eq!(losses, [2.0, 1.5]);
    }
}
