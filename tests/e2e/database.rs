//! The database file from the command line: one `keel serve` per file, and `keel check`
//! verifying (and, with no server on it, repairing) a database's summaries.

use std::process::{Command, Output};

use serde_json::json;

use crate::harness::Server;

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env_remove("KEEL_TOKEN")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_second_server_on_a_served_file_refuses_and_check_reads_it_alongside() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let server = Server::start(&db, "127.0.0.1:0".parse().unwrap());
    let run = server.post(
        "/api/v1/runs",
        &json!({"name": "r", "layers": 2, "config": {}}),
    )["id"]
        .clone();
    let steps: Vec<_> = (0..300)
        .map(|i| json!({"step": i, "scalars": {"loss": i}, "layers": {"hidden_var": [1, i]}}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run}/steps"),
        &json!({"steps": steps}),
    );
    let path = db.to_str().unwrap();

    let second = keel(&["serve", "--addr", "127.0.0.1:0", "--db", path]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("is in use by another keel process"),
        "{}",
        text(&second)
    );

    // Reading alongside a server is fine; repairing under it is not.
    let check = keel(&["check", "--db", path]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("0 wrong, 0 missing, 0 extra"),
        "{}",
        text(&check)
    );
    assert!(text(&check).contains("every summary agrees with its steps"));
    let repair = keel(&["check", "--db", path, "--repair"]);
    assert!(!repair.status.success());
    assert!(
        text(&repair).contains("in use by another keel process"),
        "{}",
        text(&repair)
    );

    server.stop();
    let repair = keel(&["check", "--db", path, "--repair"]);
    assert!(repair.status.success(), "{}", text(&repair));
    let missing = keel(&[
        "check",
        "--db",
        dir.path().join("none.db").to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no database at"),
        "{}",
        text(&missing)
    );
    let bare = keel(&["check"]);
    assert!(
        !bare.status.success() && text(&bare).contains("--db"),
        "{}",
        text(&bare)
    );
}
