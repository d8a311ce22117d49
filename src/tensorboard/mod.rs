//! `keel import tensorboard LOGDIR`: TensorBoard event files streamed into a keel server, one
//! run per directory of event files. Per-layer tags fold into layer statistics, other
//! scalars keep their tags as names, and everything else (histograms, images, text) is
//! skipped and counted. An import can be run again: it resumes into the run of the same name
//! and group, and the server counts the steps it already has as duplicates. With `--follow`
//! it keeps reading what writers append. It only reads the log directory, never writes to it.
//!
//! - [`record`]: TFRecord framing and its CRC-32C.
//! - [`proto`]: the protobuf messages of an event.
//! - [`fold`]: tags to series.
//! - [`steps`]: values to step records.
//! - [`logdir`]: run directories and how far each file has been read.
//! - [`upload`]: the server's runs and ingest.

mod fold;
mod logdir;
mod proto;
mod record;
mod steps;
mod upload;

use std::collections::HashSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_protocol::{PROTOCOL_VERSION, RunSpec};
use regex::Regex;

use fold::Folding;
use logdir::RunDir;
use upload::Server;

#[derive(clap::Args)]
pub struct TensorboardArgs {
    /// A TensorBoard log directory: a directory of `events.out.tfevents.*` files, or one with
    /// such directories below it (one run each).
    logdir: PathBuf,
    /// Keep reading: new records and new files, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Base URL of the keel server.
    #[arg(long, env = "KEEL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's operator token.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The run's name (default: the directory's path below LOGDIR, or LOGDIR's name); with
    /// several runs, the runs are `NAME/<path below LOGDIR>`.
    #[arg(long)]
    name: Option<String>,
    /// The group of the runs.
    #[arg(long)]
    group: Option<String>,
    /// Which tags are per-layer, instead of the built-in rules: a regular expression with the
    /// named groups `layer` (the layer number) and `stat` (the statistic's name), matched
    /// against whole tags, e.g. `(?P<stat>.+)/layer(?P<layer>\d+)`.
    #[arg(long, value_name = "REGEX", value_parser = fold::layer_pattern)]
    layer_pattern: Option<Regex>,
    /// Leave out the tags this regular expression matches (whole tags), e.g. Megatron's
    /// `.* vs (samples|tokens)`, whose steps are sample or token counts.
    #[arg(long, value_name = "REGEX", value_parser = fold::whole_tags)]
    skip_tags: Option<Regex>,
    /// With --follow: milliseconds between reads.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    poll_ms: u64,
}

pub fn run(args: TensorboardArgs) -> anyhow::Result<()> {
    let token = (args.token.clone().filter(|t| !t.trim().is_empty()))
        .context("importing needs the server's token: set KEEL_TOKEN or pass --token")?;
    let logdir = &args.logdir;
    anyhow::ensure!(logdir.exists(), "{} does not exist", logdir.display());
    anyhow::ensure!(
        logdir.is_dir(),
        "{} is not a directory (give the directory of the event files)",
        logdir.display()
    );
    let mut import = Import::new(&args);
    import.discover()?;
    anyhow::ensure!(
        !import.dirs.is_empty(),
        "no TensorBoard event files (events.out.tfevents.*) in {} or below it",
        logdir.display()
    );
    let server = Server::connect(&args.server, token)?;
    let stop = match args.follow {
        true => crate::train::stop_on_signal("stopping: sending what has been read…")?,
        false => std::sync::Arc::new(AtomicBool::new(false)),
    };
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        import.poll(&server, args.follow && !stopping)?;
        if !args.follow || stopping {
            break;
        }
        pause(Duration::from_millis(args.poll_ms), &stop);
    }
    import.finish();
    println!("{}", import.summary());
    Ok(())
}

/// Sleeps for `period`, or less when `stop` is set meanwhile.
fn pause(period: Duration, stop: &AtomicBool) {
    let until = Instant::now() + period;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// What was sent, and what was left out and why, of one run or all of them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub steps: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub values: u64,
    /// Values that are not scalars (histograms, images, …).
    pub skipped: u64,
    /// Values of tags matched by `--skip-tags`.
    pub excluded: u64,
    /// Values whose tag or step keel cannot take.
    pub refused: u64,
    /// Second values of a series at a step.
    pub repeats: u64,
    /// Layer statistics left out of a step for lack of some layers' values.
    pub incomplete: u64,
    /// Values of layers beyond the run's layer count.
    pub beyond: u64,
}

impl Tally {
    fn add(mut self, o: &Tally) -> Tally {
        self.steps += o.steps;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.values += o.values;
        self.skipped += o.skipped;
        self.excluded += o.excluded;
        self.refused += o.refused;
        self.repeats += o.repeats;
        self.incomplete += o.incomplete;
        self.beyond += o.beyond;
        self
    }
}

/// Things to say about a run on stderr, each once.
pub struct Notes {
    run: String,
    said: HashSet<String>,
}

impl Notes {
    pub fn new(run: &str) -> Self {
        Notes {
            run: run.to_owned(),
            said: HashSet::new(),
        }
    }

    /// Says `msg` unless something was said under `key` already.
    pub fn once(&mut self, key: impl Into<String>, msg: impl Display) {
        if self.said.insert(key.into()) {
            eprintln!("{}: {msg}", self.run);
        }
    }
}

struct Import {
    logdir: PathBuf,
    name: Option<String>,
    group: Option<String>,
    folding: Folding,
    dirs: Vec<RunDir>,
    created: usize,
}

impl Import {
    fn new(args: &TensorboardArgs) -> Self {
        Import {
            logdir: args.logdir.clone(),
            name: args.name.clone(),
            group: args.group.clone(),
            folding: Folding::new(args.layer_pattern.clone(), args.skip_tags.clone()),
            dirs: Vec::new(),
            created: 0,
        }
    }

    /// Adds the run directories that appeared since the last look.
    fn discover(&mut self) -> anyhow::Result<()> {
        for path in logdir::run_dirs(&self.logdir)? {
            if !self.dirs.iter().any(|d| d.path == path) {
                let name = logdir::run_name(&self.logdir, &path, self.name.as_deref());
                self.dirs.push(RunDir::new(path, name));
            }
        }
        Ok(())
    }

    /// Reads what is new and sends the steps that are complete: with `following`, a step is
    /// complete once a later step has been seen, or when a read brings nothing new and no
    /// file ends mid-record; otherwise every step read is.
    fn poll(&mut self, server: &Server, following: bool) -> anyhow::Result<()> {
        if following {
            self.discover()?;
        }
        for i in 0..self.dirs.len() {
            let dir = &mut self.dirs[i];
            let fresh = dir.read(&mut self.folding)?;
            let before = match following && (fresh || dir.writing()) {
                true => dir.steps.max_step,
                false => None,
            };
            if dir.steps.any_before(before) {
                self.send(server, i, before)?;
            }
        }
        Ok(())
    }

    /// Sends the steps of `self.dirs[i]` below `before` (all when `None`), making its run
    /// first if need be.
    fn send(&mut self, server: &Server, i: usize, before: Option<u64>) -> anyhow::Result<()> {
        if self.dirs[i].run.is_none() {
            let (run, created) = open(server, &self.dirs[i], self.group.as_deref())?;
            self.created += usize::from(created);
            self.dirs[i].run = Some(run);
        }
        let dir = &mut self.dirs[i];
        let (id, layers) = dir.run.expect("opened above");
        let files = plural(dir.files() as u64, "file");
        let records = dir
            .steps
            .take(before, layers, &mut dir.tally, &mut dir.notes);
        for batch in upload::batches(records) {
            let (steps, values) = (batch.len(), batch.iter().map(steps::values).sum::<usize>());
            let reply = server.send(id, batch)?;
            let t = &mut dir.tally;
            t.steps += steps as u64;
            t.values += values as u64;
            t.accepted += reply.accepted;
            t.duplicates += reply.duplicates;
            eprintln!(
                "{}: {}, {} steps ({} new), {} values sent",
                dir.name, files, t.steps, t.accepted, t.values
            );
        }
        Ok(())
    }

    /// Says what was left unread at the end.
    fn finish(&mut self) {
        for dir in &mut self.dirs {
            dir.note_partial_files();
            if dir.run.is_none() {
                dir.notes
                    .once("empty", "no scalars in its event files; no run was made");
            }
        }
    }

    /// One line: what was sent, and what was left out.
    fn summary(&self) -> String {
        let t = self
            .dirs
            .iter()
            .map(|d| d.tally)
            .fold(Tally::default(), |a, b| a.add(&b));
        let runs = self.dirs.iter().filter(|d| d.run.is_some()).count();
        let mut line = format!(
            "imported {} ({} new) from {}: {} steps ({} new, {} already there), {} values",
            plural(runs as u64, "run"),
            self.created,
            self.logdir.display(),
            t.steps,
            t.accepted,
            t.duplicates,
            t.values,
        );
        let left_out: Vec<String> = [
            (t.skipped, "values that are not scalars"),
            (t.excluded, "values of skipped tags"),
            (t.refused, "values with a tag or step keel cannot take"),
            (t.repeats, "repeated values of a series at a step"),
            (
                t.incomplete,
                "layer statistics at steps lacking some layers",
            ),
            (t.beyond, "values of layers beyond the run's layer count"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !left_out.is_empty() {
            line += &format!("; left out: {}", left_out.join(", "));
        }
        line
    }
}

/// The run `dir` goes to, and whether it is new: the newest run of its name and group, or a
/// new one with a layer for every layer index read so far.
fn open(server: &Server, dir: &RunDir, group: Option<&str>) -> anyhow::Result<((i64, u32), bool)> {
    if let Some(run) = server.find_run(&dir.name, group)? {
        let layers = plural(run.layers.into(), "layer");
        eprintln!("{}: resuming run {} ({layers})", dir.name, run.id);
        return Ok(((run.id, run.layers), false));
    }
    let layers = dir.steps.max_layer.map_or(1, |m| m + 1);
    let spec = RunSpec {
        name: dir.name.clone(),
        group: group.map(str::to_owned),
        tags: vec!["tensorboard".into()],
        config: serde_json::json!({"tensorboard": {"dir": absolute(&dir.path)}}),
        layers,
        variant: None,
        protocol: Some(PROTOCOL_VERSION),
        ranks: None,
    };
    let id = server.create_run(&spec)?;
    eprintln!(
        "{}: created run {id} with {}",
        dir.name,
        plural(layers.into(), "layer")
    );
    Ok(((id, layers), true))
}

fn plural(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}
