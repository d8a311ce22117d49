//! The trainer's integration tests: one binary, so linking is paid once.

mod commands;
mod gradients;
mod link;
mod mup;
mod ops;
mod stability;
mod stats;
mod support;
mod training;
