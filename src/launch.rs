//! The server's [`Launcher`]: grids are read by the trainer crate, and each variant is trained
//! by this same binary as `keel train --grid … --variant …`, so a launch from the browser
//! trains exactly what `keel ablate` would. The server knows neither; it gets this from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use keel_server::launches::{Job, LaunchConfig, Launcher};

struct KeelLauncher {
    exe: PathBuf,
}

impl Launcher for KeelLauncher {
    fn variants(&self, grid: &Path) -> anyhow::Result<Vec<String>> {
        let variants = keel_trainer::load_grid(grid)?;
        Ok(variants.into_iter().map(|(name, _)| name).collect())
    }

    /// The token is not here: the server hands it over in the environment.
    fn command(&self, job: &Job) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("train")
            .arg("--server")
            .arg(&job.server)
            .arg("--grid")
            .arg(&job.grid)
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

/// Launching from the grids folder `grids`, `max_trainers` trainers at a time; `None` (off)
/// for a limit of 0.
pub fn config(grids: PathBuf, max_trainers: usize) -> anyhow::Result<Option<LaunchConfig>> {
    if max_trainers == 0 {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("finding the keel binary to launch trainers with")?;
    if !grids.is_dir() {
        tracing::warn!(
            "the grids folder {} does not exist: nothing to launch",
            grids.display()
        );
    }
    let mut config = LaunchConfig::new(Arc::new(KeelLauncher { exe }), grids);
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
        };
        let job = Job {
            grid: PathBuf::from("configs/ablations/stability.toml"),
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
                "configs/ablations/stability.toml",
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
    fn every_grid_of_the_repository_lists_its_variants() {
        let launcher = KeelLauncher {
            exe: PathBuf::new(),
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/ablations");
        let stability = launcher.variants(&dir.join("stability.toml")).unwrap();
        assert_eq!(stability, ["stable", "unstable"]);
        assert_eq!(
            launcher
                .variants(&dir.join("yulan-ladder.toml"))
                .unwrap()
                .len(),
            6
        );
    }
}
