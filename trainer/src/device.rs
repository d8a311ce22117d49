//! Choosing where tensors live: `cpu` or `cuda:N`, and how many CPU threads candle uses.
//!
//! CUDA is a cargo feature (`cuda`) because building candle's kernels needs nvcc; a binary
//! built without it says so instead of failing somewhere deep inside candle.

use anyhow::{Result, bail};
use candle_core::Device;

/// Parse `cpu`, `cuda` or `cuda:N`.
pub fn parse(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("bad device `{spec}`: expected cuda:N"))?,
                None => 0,
            };
            cuda(ordinal)
        }
        other => bail!("unknown device `{other}`: use `cpu` or `cuda:N`"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    bail!("this keel was built without CUDA; rebuild with --features cuda")
}

/// Let f32 matrix products use TF32 where the device has it (NVIDIA Ampere and later); the CPU
/// has no TF32 and computes f32.
pub fn allow_tf32(device: &Device) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        return;
    }
    if device.is_cpu() {
        tracing::info!("dtype tf32 on the CPU computes in f32");
    }
}

/// The environment for candle's CPU backend on a machine shared with other busy processes.
///
/// candle sizes its thread pools from `CANDLE_NUM_THREADS` and `RAYON_NUM_THREADS` the first
/// time it runs an op, and its element-wise pool spins and waits on every worker. Measured on
/// 2 cores with `proxy-small` and the fused CPU kernels of [`crate::ops`], which run on rayon's
/// pool (2026-12-01, `trainer/examples/bench`, medians of three interleaved runs): on an
/// otherwise idle machine the default 2 threads are ≈3 % faster (13,550 tokens/s against
/// 13,120), but with one other busy process on the machine the default collapses to 5,700
/// (once 2,300) while one candle thread holds 11,900, since candle's spinning worker takes a
/// core from rayon's. So these are worth setting whenever the trainer runs on the CPU (e.g.
/// `keel demo` beside a browser and a build), and `keel train` sets them for itself. Setting the environment of a running process is
/// `unsafe` in Rust 2024 and this workspace forbids unsafe code, so a launcher passes them to
/// the process it spawns (the server's grid launcher does; `keel train` re-executes itself
/// with them; see also [`rerun_with_thread_env`]) or a user exports them.
///
/// The allocator's settings go with them: mimalloc returns freed memory to the OS after 10 ms
/// by default, and candle frees and reallocates large buffers every op, so keeping freed pages
/// (`MIMALLOC_PURGE_DELAY=-1`) measured ≈ 7 % more tokens/s; and a trainer started by a server
/// must not inherit the server's own settings ([`crate::SERVER_ALLOCATOR_ENV`]).
pub fn recommended_thread_env() -> Vec<(&'static str, String)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        ("CANDLE_NUM_THREADS", "1".to_string()),
        ("RAYON_NUM_THREADS", cores.to_string()),
        ("MIMALLOC_PURGE_DELAY", "-1".to_string()),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "2".to_string()),
    ]
}

/// Whether candle's thread variables are already set (by the user, or by a parent process).
pub fn thread_env_is_set() -> bool {
    std::env::var_os("CANDLE_NUM_THREADS").is_some()
}

/// Run this same program again, with the same arguments and [`recommended_thread_env`], and
/// return its exit code. A CLI can call this first thing in `main` for training commands when
/// [`thread_env_is_set`] is false and the machine is shared (see [`recommended_thread_env`]).
/// The child receives Ctrl-C as well (same process group), so the parent should ignore it and
/// simply wait.
pub fn rerun_with_thread_env() -> Result<i32> {
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(recommended_thread_env())
        .status()?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_nonsense_is_refused() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse("tpu").is_err());
        assert!(parse("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn asking_for_cuda_without_the_feature_says_how_to_get_it() {
        let err = parse("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
