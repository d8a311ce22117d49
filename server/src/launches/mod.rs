//! Ablation grids launched from the browser: one trainer per variant, either a child process
//! of the server (at most `max_trainers` at a time over all launches, first come first served)
//! or a SLURM batch job (the scheduler queues them), as the [`Engine`] says.
//!
//! The server does not know how to train, nor where grids come from or how to read one: the
//! root CLI hands it a [`Launcher`] that names the grids (built into the binary, or files of a
//! folder), lists a grid's variants and builds the command of one variant (the same `keel`
//! binary running `keel train --grid … --variant …`). This module owns the queue, the
//! child processes ([`child`]) and the states of the launches; storage is only read, to find
//! the run a trainer created (by its group and variant). Launch records are stored with the
//! process ids or job ids of their trainers, so a restarted server follows them on.
//!
//! - [`queue`]: the launches, their queue and the trainers they run; every change is
//!   published as the whole launch record, for the runs page's live stream.
//! - [`child`]: one trainer process, from start to exit.
//! - [`scheduled`]: variants as SLURM jobs: submitted, followed by polling, cancelled.
//! - [`sbatch`]: SLURM's client commands.
//! - [`grids`]: which names may be asked for, and which files of a folder are grids.
//!
//! Another scheduler (Kubernetes Jobs, say) would be a third [`Engine`] beside [`scheduled`]:
//! submit a variant and keep its id in the record, read the states of all ids in one call,
//! and stop one with a signal first.

mod child;
pub mod grids;
mod queue;
pub mod sbatch;
mod scheduled;

use std::sync::Arc;
use std::time::Duration;

pub use queue::Launches;

/// What the root CLI knows and the server does not: how grids are read and trainers started.
pub trait Launcher: Send + Sync + 'static {
    /// The names of the grids that can be launched, sorted; each one a
    /// [`grids::valid_name`].
    fn grids(&self) -> anyhow::Result<Vec<String>>;

    /// The variant names of grid `grid` (one of [`Launcher::grids`]), in the order they are
    /// launched; an error says why the grid does not load.
    fn variants(&self, grid: &str) -> anyhow::Result<Vec<String>>;

    /// Where the grids come from, for the runs page ("the built-in grids").
    fn source(&self) -> String;

    /// The process that trains one variant. The server adds the token to its environment
    /// (`KEEL_TOKEN`) and takes care of its stdio. Under SLURM, its program, arguments and
    /// the environment set on it become the job's command line and environment.
    fn command(&self, job: &Job) -> std::process::Command;

    /// The `sbatch` options grid `grid` asks for (its `[launch.slurm]` table), on top of the
    /// server's; none by default.
    fn sbatch_options(&self, grid: &str) -> anyhow::Result<sbatch::SbatchOptions> {
        let _ = grid;
        Ok(sbatch::SbatchOptions::default())
    }
}

/// Where launched variants train.
#[derive(Clone, Debug, Default)]
pub enum Engine {
    /// Child processes of the server, [`LaunchConfig::max_trainers`] at a time.
    #[default]
    Local,
    /// One SLURM batch job per variant; the scheduler queues them.
    Slurm(SlurmConfig),
}

/// The SLURM launcher's settings.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// The `sbatch` options of every job (a grid's `[launch.slurm]` table wins over them).
    pub options: sbatch::SbatchOptions,
    /// Where the jobs write their output, `<group>-<variant>-<job id>.out`: a folder the
    /// compute nodes can write and this server can read, for the last lines of a failed job.
    pub logs: std::path::PathBuf,
    /// How often the scheduler is asked for the states of the jobs (one `squeue` call).
    pub poll_every: Duration,
}

/// One variant to train, as the [`Launcher`] is asked to start it.
#[derive(Clone, Debug)]
pub struct Job {
    /// The grid's name.
    pub grid: String,
    pub variant: String,
    pub group: String,
    pub steps: Option<u64>,
    /// The server's own base URL, for the trainer to stream to.
    pub server: String,
}

/// Launching, as configured by the root CLI. A server without one answers the launch
/// endpoints with 404 and shows no launch panel.
#[derive(Clone)]
pub struct LaunchConfig {
    pub launcher: Arc<dyn Launcher>,
    pub engine: Engine,
    /// Trainer processes running at once, over all launches (at least 1), for the local
    /// engine; the scheduler decides under SLURM.
    pub max_trainers: usize,
    /// How long a trainer asked to stop (SIGTERM) has before it is killed.
    pub stop_grace: Duration,
    /// How long an ended launch is kept (shown on `/`) before it is forgotten.
    pub retention: Duration,
}

impl LaunchConfig {
    pub fn new(launcher: Arc<dyn Launcher>) -> LaunchConfig {
        LaunchConfig {
            launcher,
            engine: Engine::Local,
            max_trainers: 1,
            stop_grace: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("grids", &self.launcher.source())
            .field("engine", &self.engine)
            .field("max_trainers", &self.max_trainers)
            .field("stop_grace", &self.stop_grace)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}
