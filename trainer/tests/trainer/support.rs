//! Shared helpers: tiny configs and a trainer in a temporary directory.

use std::path::Path;

use candle_core::Device;
use keel_trainer::config::{TrainConfig, load_config};
use keel_trainer::trainer::Trainer;

/// `configs/proxy-tiny.toml` from the repository.
pub fn tiny() -> TrainConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/proxy-tiny.toml");
    load_config(&path).expect("proxy-tiny.toml loads")
}

pub fn trainer(cfg: TrainConfig, dir: &Path) -> Trainer {
    Trainer::new(cfg, &Device::Cpu, dir.to_path_buf()).expect("trainer builds")
}

/// A trainer in f64, for comparisons that must agree to 1e-9.
pub fn trainer_f64(cfg: TrainConfig, dir: &Path) -> Trainer {
    Trainer::with_dtype(
        cfg,
        &Device::Cpu,
        dir.to_path_buf(),
        candle_core::DType::F64,
    )
    .expect("trainer builds")
}

/// The losses of `n` steps.
pub fn losses(t: &mut Trainer, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| t.step().expect("step runs").scalars["loss"].get())
        .collect()
}
