//! End-to-end: a real keel server over a real SQLite file, and the real trainer streaming
//! into it over HTTP.

mod ablation;
mod anywhere;
mod backup;
mod browser;
mod closed_loop;
mod database;
mod faults;
mod harness;
mod launch;
mod migrate;
mod outbox;
mod python;
mod replicas;
mod slurm;
mod tensorboard;
mod training;
mod users;
// The server's WebDriver client, shared rather than copied; not every method is used here.
#[allow(dead_code)]
#[path = "../../server/tests/api/webdriver.rs"]
mod webdriver;
