//! No step silently dropped by a trainer: refused batches become dead letters and fail
//! `keel train`; a trainer that ends while its server is away keeps its steps and its final
//! status for `keel sync`; a stalled sender overflows to disk; a resume checks its run.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, TOKEN, wait_for};

fn keel(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KEEL_TOKEN");
    c
}

fn train(url: &str, dir: &Path, steps: u64, extra: &[&str]) -> std::process::Child {
    let steps = steps.to_string();
    let dir = dir.display().to_string();
    let mut args = vec![
        "train",
        "--config",
        "proxy-tiny",
        "--server",
        url,
        "--token",
        TOKEN,
        "--steps",
        &steps,
        "--checkpoint-dir",
        &dir,
    ];
    args.extend_from_slice(extra);
    keel(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stored(server: &Server, run: i64) -> u64 {
    let r: Value = server.get(&format!("/api/v1/runs/{run}"));
    r["steps"].as_u64().unwrap_or(0)
}

#[test]
fn a_trainer_that_ends_while_its_server_is_away_keeps_everything_for_keel_sync() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let ckpt = dir.path().join("ckpt");
    let server = Server::start(&db, "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let child = train(&server.url(), &ckpt, 600, &[]);
    wait_for(120, "the first steps", || {
        server.get("/api/v1/runs")[0]["id"]
            .as_i64()
            .is_some_and(|r| stored(&server, r) >= 30)
    });
    server.stop();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("keel sync"), "{said}");
    let spill = ckpt.join("spill-run-1.jsonl");
    let control = ckpt.join("spill-run-1.control.jsonl");
    assert!(spill.exists() && control.exists(), "{said}");

    // Nothing reaches a server that is still away: the files stay, and sync says so.
    let out = keel(&[
        "sync",
        &ckpt.display().to_string(),
        "--server",
        &format!("http://{addr}"),
        "--token",
        TOKEN,
        "--patience",
        "1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("still to send"), "{}", stderr(&out));
    assert!(spill.exists());

    let server = Server::start(&db, addr);
    let out = keel(&[
        "sync",
        &ckpt.display().to_string(),
        "--server",
        &server.url(),
        "--token",
        TOKEN,
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored(&server, 1), 600);
    let run = server.get("/api/v1/runs/1");
    assert_eq!(run["status"], "finished", "{run}");
    assert!(!spill.exists() && !control.exists());

    // A resume against another server's database is refused before any training.
    let other = Server::start(&dir.path().join("other.db"), "127.0.0.1:0".parse().unwrap());
    let out = train(
        &other.url(),
        &ckpt,
        700,
        &[
            "--resume",
            &ckpt.join("step-00000600").display().to_string(),
        ],
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not have"), "{}", stderr(&out));
    // And one under another name on the right server.
    let out = train(
        &server.url(),
        &ckpt,
        700,
        &[
            "--resume",
            &ckpt.join("step-00000600").display().to_string(),
            "--name",
            "someone-else",
        ],
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`proxy-tiny` with 2 layers"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stored(&server, 1), 600, "nothing was trained or sent");
}

#[test]
fn batches_a_server_refuses_are_dead_letters_and_keel_train_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let server = Server::start(&dir.path().join("first.db"), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let child = train(&server.url(), &ckpt, 400, &[]);
    wait_for(120, "the first steps", || {
        server.get("/api/v1/runs")[0]["id"]
            .as_i64()
            .is_some_and(|r| stored(&server, r) >= 20)
    });
    // Someone restarts the server on another database: run 1 is not there.
    server.stop();
    let wrong = Server::start(&dir.path().join("second.db"), addr);
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "keel train must fail: {}",
        stderr(&out)
    );
    let said = stderr(&out);
    assert!(said.contains("refused"), "{said}");
    let letters = keel_trainer::link::Outbox::new(&ckpt, 1)
        .dead_letters()
        .unwrap();
    assert!(!letters.is_empty());
    let steps: usize = letters.iter().map(|l| l.batch.steps.len()).sum();
    assert!(steps >= 100, "{steps} steps kept");
    assert!(
        letters
            .iter()
            .all(|l| l.status == 404 && l.reason.contains("run 1")),
        "{:?}",
        letters[0].reason
    );
    drop(wrong);
}

#[test]
fn a_stalled_sender_overflows_to_disk_and_loses_no_step() {
    use keel_trainer::link::{Link, Outbox, Spill};
    let dir = tempfile::tempdir().unwrap();
    // A server that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hang.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in hang.incoming().take(4) {
            open.push(conn);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let outbox = Outbox::new(dir.path(), 7);
    let spill = outbox.spill.clone();
    let mut link = Link::spawn(
        &format!("http://{addr}"),
        Some(TOKEN.into()),
        outbox.clone(),
    );
    let n = 20_000u64;
    for s in 0..n {
        link.step(0, step(s));
    }
    assert!(
        !Spill::new(&outbox.overflow).is_empty(),
        "the loop wrote its overflow to disk instead of dropping it"
    );
    let report = link.finish(Duration::from_secs(1));
    let kept: Vec<u64> = Spill::new(&spill)
        .read()
        .unwrap()
        .iter()
        .flat_map(|b| b.steps.iter().map(|s| s.step))
        .collect();
    let mut sorted = kept.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "every step kept once");
    assert_eq!(report.steps_spilled, n);
    drop(held);
}

fn step(s: u64) -> keel_protocol::StepRecord {
    keel_protocol::StepRecord {
        step: s,
        time: None,
        tokens: None,
        scalars: [("loss".to_string(), keel_protocol::Metric(1.0))].into(),
        layers: Default::default(),
    }
}
