//! `keel ablate`: a grid becomes one run per variant, all in one group.

use std::process::Command;

use crate::harness::{Server, TOKEN, config};

/// Runs `keel ablate` on a grid under `configs/` for `steps` steps, two variants at a time,
/// in `dir`, and checks that it succeeded.
fn ablate(server: &Server, dir: &std::path::Path, grid: &str, steps: u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir)
        .args(["ablate", "--parallel", "2", "--server", &server.url()])
        .args(["--steps", &steps.to_string()])
        .arg(config(grid))
        .env("KEEL_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_grid_becomes_one_run_per_variant_in_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    ablate(&server, dir.path(), "ablations/stability.toml", 3);
    let runs = server.get("/api/v1/runs");
    let runs = runs.as_array().unwrap();
    let mut variants: Vec<&str> = runs
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    variants.sort();
    assert_eq!(variants, ["stable", "unstable"]);
    assert_eq!(runs[0]["group"], runs[1]["group"]);
    for r in runs {
        assert_eq!(r["status"], "finished");
        assert_eq!(server.get(&format!("/api/v1/runs/{}", r["id"]))["steps"], 3);
    }
}

#[test]
fn a_grid_that_does_not_exist_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "ablate",
            "no/such/grid.toml",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/grid.toml"), "{err}");
}

#[test]
fn the_yulan_ladder_runs_every_rung_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    ablate(&server, dir.path(), "ablations/yulan-ladder.toml", 2);
    let runs = server.get("/api/v1/runs");
    let mut variants: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["variant"].as_str().unwrap().to_owned())
        .collect();
    variants.sort();
    let rungs = [
        "1-baseline",
        "2-qk-norm",
        "3-weight-decay",
        "4-mup",
        "5-depth-mup",
        "6-wesar",
    ];
    assert_eq!(variants, rungs);
}
