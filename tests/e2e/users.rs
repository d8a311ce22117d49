//! `keel users` beside a running `keel serve` on the same database: a person added gets a
//! token that works at once, is listed with their role, and is refused once removed.

use std::process::{Command, Output};

use serde_json::json;

use crate::harness::{Process, db_arg, free_addr};

fn users(db: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("users")
        .args(args)
        .arg("--db")
        .arg(db_arg(db))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn create_run(url: &str, token: &str) -> u16 {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    agent
        .post(&format!("{url}/api/v1/runs"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(json!({"name": "r", "layers": 1}))
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn people_added_with_keel_users_sign_in_at_once_and_not_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let server = Process::start(&db, free_addr());

    let out = users(&db, &["add", "alice", "--role", "operator"]);
    let (token, said) = text(&out);
    assert!(out.status.success(), "{said}");
    let token = token.trim().to_owned();
    assert_eq!(token.len(), 32, "{token}");
    assert!(said.contains("added alice as operator"), "{said}");
    assert_eq!(create_run(&server.url, &token), 201);

    let out = users(&db, &["add", "vic", "--role", "viewer"]);
    let viewer = text(&out).0.trim().to_owned();
    assert_eq!(create_run(&server.url, &viewer), 403);

    let (list, _) = text(&users(&db, &["list"]));
    assert!(
        list.contains("alice") && list.contains("operator"),
        "{list}"
    );
    assert!(list.contains("vic") && list.contains("viewer"), "{list}");
    assert!(!list.contains(&token), "a listing shows no token");

    // A role changed takes effect at the next request.
    assert!(users(&db, &["role", "vic", "operator"]).status.success());
    assert_eq!(create_run(&server.url, &viewer), 201);

    // Refusals say why and change nothing.
    let out = users(&db, &["add", "alice", "--role", "admin"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("`alice` is there already"),
        "{}",
        text(&out).1
    );
    let out = users(&db, &["add", "bob", "--role", "boss"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("`boss` is not a role"),
        "{}",
        text(&out).1
    );
    let out = users(&db, &["add", "token", "--role", "admin"]);
    assert!(!out.status.success());
    let out = users(&db, &["remove", "nobody"]);
    assert!(
        text(&out).1.contains("nobody is called `nobody`"),
        "{}",
        text(&out).1
    );

    assert!(users(&db, &["remove", "alice"]).status.success());
    assert_eq!(create_run(&server.url, &token), 401);
    server.kill();
}
