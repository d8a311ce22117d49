//! End-to-end: a real keel server over a real SQLite file, and the real trainer streaming
//! into it over HTTP.

mod ablation;
mod browser;
mod harness;
mod training;
