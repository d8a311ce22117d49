//! The server's [`Launcher`]: the grids are the ones built into this binary, and the files of
//! a folder when `--grids` names one (a file wins over a built-in grid of the same name). They
//! are read by the trainer crate, and each variant is trained by this same binary as `keel
//! train --grid … --variant …`, so a launch from the browser trains exactly what `keel ablate`
//! would. The server knows none of this; it gets it from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use keel_server::launches::sbatch::SbatchOptions;
use keel_server::launches::{Engine, Job, LaunchConfig, Launcher, grids};
use keel_trainer::config::builtin;
use serde::Deserialize;

/// A grid's `[launch]` table: how its trainers are launched, beside what they train.
///
/// ```toml
/// [launch]
/// device = "cuda:0"        # what each trainer trains on (default cpu)
/// [launch.slurm]           # sbatch options of its jobs, over the server's or keel ablate's
/// partition = "gpu"
/// gres = "gpu:1"
/// time = "4:00:00"
/// cpus = 8
/// mem = "32G"
/// account = "proxy"
/// args = ["--qos=high"]
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridLaunch {
    pub device: Option<String>,
    pub slurm: SbatchOptions,
}

impl GridLaunch {
    /// The `[launch]` table of grid `spec` (a built-in name or a file).
    pub fn of(spec: &Path) -> anyhow::Result<GridLaunch> {
        let table = keel_trainer::load_launch(spec)?;
        let launch: GridLaunch = toml::Value::Table(table)
            .try_into()
            .context("its [launch] table")?;
        launch.slurm.check().context("its [launch.slurm] table")?;
        Ok(launch)
    }
}

struct KeelLauncher {
    exe: PathBuf,
    /// A folder of grid files, beside the built-in grids.
    folder: Option<PathBuf>,
}

impl KeelLauncher {
    /// What `keel train --grid` is given for grid `name`: the folder's file, else the name of
    /// the built-in grid.
    fn spec(&self, name: &str) -> PathBuf {
        self.folder
            .as_deref()
            .and_then(|dir| grids::path(dir, name))
            .and_then(|p| std::path::absolute(p).ok())
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

impl Launcher for KeelLauncher {
    fn grids(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = builtin::grids().map(|b| b.name.to_owned()).collect();
        if let Some(dir) = &self.folder {
            let files = grids::names(dir)
                .with_context(|| format!("reading the grids folder {}", dir.display()))?;
            names.extend(files);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn variants(&self, grid: &str) -> anyhow::Result<Vec<String>> {
        let spec = self.spec(grid);
        let variants = keel_trainer::load_grid(&spec)?;
        GridLaunch::of(&spec)?;
        Ok(variants.into_iter().map(|(name, _)| name).collect())
    }

    fn sbatch_options(&self, grid: &str) -> anyhow::Result<SbatchOptions> {
        Ok(GridLaunch::of(&self.spec(grid))?.slurm)
    }

    fn source(&self) -> String {
        match &self.folder {
            Some(dir) => format!(
                "the built-in ones and the *.toml files of {}",
                dir.display()
            ),
            None => "the ones built into keel (keel configs lists them)".into(),
        }
    }

    /// The token is not here: the server hands it over in the environment.
    fn command(&self, job: &Job) -> std::process::Command {
        let spec = self.spec(&job.grid);
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("train")
            .arg("--server")
            .arg(&job.server)
            .arg("--grid")
            .arg(&spec)
            .arg("--variant")
            .arg(&job.variant)
            .arg("--group")
            .arg(&job.group);
        if let Some(steps) = job.steps {
            cmd.arg("--steps").arg(steps.to_string());
        }
        // Checked when the grid was launched; a table broken since then trains on the CPU.
        if let Some(device) = GridLaunch::of(&spec).ok().and_then(|l| l.device) {
            cmd.arg("--device").arg(device);
        }
        // candle's thread settings that train fastest beside other work (the server, other
        // trainers); a user's own settings, inherited from the server, win.
        if !keel_trainer::device::thread_env_is_set() {
            cmd.envs(keel_trainer::device::recommended_thread_env());
        }
        cmd
    }
}

/// Launching the built-in grids and those of the folder `grids` on `engine`, locally
/// `max_trainers` trainers at a time; `None` (off) for a limit of 0.
pub fn config(
    grids: Option<PathBuf>,
    max_trainers: usize,
    engine: Engine,
) -> anyhow::Result<Option<LaunchConfig>> {
    if max_trainers == 0 {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("finding the keel binary to launch trainers with")?;
    if let Some(dir) = grids.as_ref().filter(|d| !d.is_dir()) {
        anyhow::bail!("the grids folder {} does not exist", dir.display());
    }
    let launcher = KeelLauncher { exe, folder: grids };
    let mut config = LaunchConfig::new(Arc::new(launcher));
    config.max_trainers = max_trainers;
    config.engine = engine;
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_is_trained_by_keel_train_with_the_token_left_to_the_environment() {
        let launcher = KeelLauncher {
            exe: PathBuf::from("/bin/keel"),
            folder: None,
        };
        let job = Job {
            grid: "stability".into(),
            variant: "stable".into(),
            group: "stability-1764300000".into(),
            steps: Some(300),
            server: "http://127.0.0.1:8080".into(),
        };
        let cmd = launcher.command(&job);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "train",
                "--server",
                "http://127.0.0.1:8080",
                "--grid",
                "stability",
                "--variant",
                "stable",
                "--group",
                "stability-1764300000",
                "--steps",
                "300"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("token")));
        if !keel_trainer::device::thread_env_is_set() {
            let threads = cmd
                .get_envs()
                .find(|(k, _)| *k == "CANDLE_NUM_THREADS")
                .and_then(|(_, v)| v);
            assert_eq!(threads.and_then(|v| v.to_str()), Some("1"));
        }
        // The command line parses as `keel train`.
        let argv = std::iter::once("keel").chain(args.iter().copied());
        <crate::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    }

    #[test]
    fn the_built_in_grids_launch_beside_a_folders_which_win_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mine = "base = \"proxy-tiny\"\n[variants.only]\nrun.steps = 2\n";
        std::fs::write(dir.path().join("stability.toml"), mine).unwrap();
        std::fs::write(dir.path().join("mine.toml"), mine).unwrap();
        let built_in = KeelLauncher {
            exe: PathBuf::new(),
            folder: None,
        };
        assert_eq!(
            built_in.grids().unwrap(),
            ["mup-transfer", "stability", "yulan-ladder"]
        );
        assert_eq!(built_in.variants("mup-transfer").unwrap().len(), 18);
        assert_eq!(
            built_in.variants("stability").unwrap(),
            ["stable", "unstable"]
        );
        assert_eq!(built_in.variants("yulan-ladder").unwrap().len(), 6);
        assert_eq!(built_in.spec("stability"), PathBuf::from("stability"));

        let both = KeelLauncher {
            exe: PathBuf::new(),
            folder: Some(dir.path().to_owned()),
        };
        assert_eq!(
            both.grids().unwrap(),
            ["mine", "mup-transfer", "stability", "yulan-ladder"]
        );
        assert_eq!(both.variants("stability").unwrap(), ["only"]);
        assert!(both.spec("mine").is_absolute());
        assert_eq!(both.spec("yulan-ladder"), PathBuf::from("yulan-ladder"));
        assert!(config(Some(dir.path().join("missing")), 1, Engine::Local).is_err());
    }

    #[test]
    fn a_grids_launch_table_sets_its_device_and_sbatch_options_and_no_variants_config() {
        let dir = tempfile::tempdir().unwrap();
        let grid = "base = \"proxy-tiny\"\n[variants.a]\noptim.lr = 0.01\n\
                    [launch]\ndevice = \"cuda:0\"\n\
                    [launch.slurm]\npartition = \"gpu\"\ngres = \"gpu:1\"\ncpus = 4\n\
                    args = [\"--qos=high\"]\n";
        std::fs::write(dir.path().join("g.toml"), grid).unwrap();
        let launcher = KeelLauncher {
            exe: PathBuf::from("/bin/keel"),
            folder: Some(dir.path().to_owned()),
        };
        assert_eq!(launcher.variants("g").unwrap(), ["a"]);
        let options = launcher.sbatch_options("g").unwrap();
        assert_eq!(options.partition.as_deref(), Some("gpu"));
        assert_eq!(options.gres.as_deref(), Some("gpu:1"));
        assert_eq!(options.cpus, Some(4));
        assert_eq!(options.args, ["--qos=high"]);
        let job = Job {
            grid: "g".into(),
            variant: "a".into(),
            group: "g-1".into(),
            steps: None,
            server: "http://127.0.0.1:8080".into(),
        };
        let cmd = launcher.command(&job);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args[args.len() - 2..], ["--device", "cuda:0"]);

        // A key the table does not know is an error that names it, and the grid does not load.
        let bad = grid.replace("cpus = 4", "cpu = 4");
        std::fs::write(dir.path().join("g.toml"), bad).unwrap();
        let err = format!("{:#}", launcher.variants("g").unwrap_err());
        assert!(err.contains("[launch]") && err.contains("cpu"), "{err}");
        let bad = grid.replace("args = [\"--qos=high\"]", "args = [\"high\"]");
        std::fs::write(dir.path().join("g.toml"), bad).unwrap();
        let err = format!("{:#}", launcher.variants("g").unwrap_err());
        assert!(err.contains("not an option"), "{err}");
    }
}
