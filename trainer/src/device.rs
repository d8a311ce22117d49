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

/// The environment candle's CPU backend should start with on a small machine.
///
/// candle sizes its thread pools from `CANDLE_NUM_THREADS` and `RAYON_NUM_THREADS` the
/// first time it runs an op, and its own pool spins while waiting, which hurts when anything
/// else holds a core. Setting the environment of a running process is `unsafe` in Rust 2024
/// (and this workspace forbids unsafe code), so a launcher passes these to the trainer
/// process it spawns — or a user exports them.
pub fn recommended_thread_env() -> Vec<(&'static str, String)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        ("CANDLE_NUM_THREADS", "1".to_string()),
        ("RAYON_NUM_THREADS", cores.to_string()),
    ]
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
