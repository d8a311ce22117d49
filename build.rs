//! Puts the git revision the binary is built from into `KEEL_GIT_REV`, for `keel --version`:
//! the `KEEL_GIT_REV` of the build's environment when set (a Docker build, which has no
//! `.git`), else `git rev-parse`, with `-dirty` for uncommitted changes, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KEEL_GIT_REV");
    for path in [
        ".git/HEAD",
        ".git/index",
        ".git/refs/heads",
        ".git/packed-refs",
    ] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let rev = std::env::var("KEEL_GIT_REV")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEEL_GIT_REV={}", rev.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_rev() -> Option<String> {
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).filter(|r| !r.is_empty())?;
    // Tracked files only: build outputs and scratch files do not make a build dirty.
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
