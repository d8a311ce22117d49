//! The server's [`Launcher`]: the grids are the ones built into this binary, and the files of
//! a folder when `--grids` names one (a file wins over a built-in grid of the same name). They
//! are read by the trainer crate, and each variant is trained by this same binary as `keel
//! train --grid … --variant …`, so a launch from the browser trains exactly what `keel ablate`
//! would. The server knows none of this; it gets it from here.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use keel_server::launches::{Job, LaunchConfig, Launcher, grids};
use keel_trainer::config::builtin;

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
        let variants = keel_trainer::load_grid(&self.spec(grid))?;
        Ok(variants.into_iter().map(|(name, _)| name).collect())
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
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("train")
            .arg("--server")
            .arg(&job.server)
            .arg("--grid")
            .arg(self.spec(&job.grid))
            .arg("--variant")
            .arg(&job.variant)
            .arg("--group")
            .arg(&job.group);
        if let Some(steps) = job.steps {
            cmd.arg("--steps").arg(steps.to_string());
        }
        // candle's thread settings that train fastest beside other work (the server, other
        // trainers); a user's own settings, inherited from the server, win.
        if !keel_trainer::device::thread_env_is_set() {
            cmd.envs(keel_trainer::device::recommended_thread_env());
        }
        cmd
    }
}

/// Launching the built-in grids and those of the folder `grids`, `max_trainers` trainers at a
/// time; `None` (off) for a limit of 0.
pub fn config(grids: Option<PathBuf>, max_trainers: usize) -> anyhow::Result<Option<LaunchConfig>> {
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
        assert!(config(Some(dir.path().join("missing")), 1).is_err());
    }
}
