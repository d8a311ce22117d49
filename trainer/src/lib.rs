//! The keel trainer: a candle Llama-style proxy model with stability taps.
//!
//! - [`config`]: the TOML training config, every stability switch a key.
//! - [`rng`]: the seeded generator behind initial weights and batch sampling.
//! - [`params`]: named parameters, their groups and their initialisation schemes.
//! - [`model`]: the decoder, its forward pass with taps, and the loss.
//! - [`ops`]: RMSNorm, causal softmax, RoPE and SwiGLU as fused CPU kernels with a backward.
//! - [`stats`]: per-layer statistics and per-step scalars under the contract's names.
//! - [`optim`]: AdamW with parameter groups and saveable moments; global-norm clipping.
//! - [`schedule`]: the warmup–stable–decay LR schedule as a pure function.
//! - [`data`] and [`generators`]: the weighted data mix, tokenizers and built-in sources.
//! - [`memory`]: a step's activation memory, checked before a context switch.
//! - [`checkpoint`]: the on-disk checkpoint layout (safetensors + JSON run state).
//! - [`trainer`]: one run in memory and its synchronous step.
//! - [`commands`]: operator commands applied at step boundaries.
//! - [`link`]: the server link on its own threads, with the spill file.
//! - [`run`]: `keel train` — the loop that ties a trainer, its commands and its link together.
//! - [`ablation`]: grid files, one config per variant.
//! - [`device`]: `cpu` / `cuda:N` and CPU thread settings.

pub mod ablation;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod generators;
pub mod link;
pub mod memory;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod trainer;

pub use ablation::{load_grid, load_launch};
pub use config::{TrainConfig, load_config};
pub use run::{TrainOptions, TrainSummary, train};

/// The allocator the trainer was measured with (≈1.5× faster steps than glibc's on CPU, where
/// candle allocates and frees large buffers every op). A binary opts in with
/// `#[global_allocator] static GLOBAL: keel_trainer::Allocator = keel_trainer::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// The [`Allocator`]'s settings for a process that serves rather than trains. By default it
/// keeps freed memory for 100 ms or more and commits whole arenas up front, which is what
/// makes training fast and what makes a server's resident memory the high-water mark of every
/// request it ever served (measured: 110 MB after twelve 100,000-bucket reads that hold 18 MB
/// at most, against 50 MB with these). The allocator reads them when the process starts, so a
/// binary re-executes itself with them (see `keel serve`).
pub const SERVER_ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];
