//! The command queue: issue, deliver, apply once, audit; and the lost-trainer watchdog.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TOKEN, TestApp, step};

#[test]
fn a_command_goes_from_queued_to_delivered_to_applied_and_is_audited() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let r = app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "set_lr", "lr": 0.003}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    let cid = r.body["id"].as_i64().unwrap();
    let pending = app.get_with_token(&format!("/api/v1/runs/{id}/commands/pending?wait_ms=0"));
    assert_eq!(pending.body[0]["id"], cid);
    assert_eq!(pending.body[0]["status"], "delivered");
    let r = app.post(
        &format!("/api/v1/runs/{id}/commands/{cid}/outcome"),
        &json!({"status": "applied", "step": 41}),
    );
    assert_eq!(r.body["status"], "applied", "{}", r.body);
    // A second report of the same command changes nothing.
    app.post(
        &format!("/api/v1/runs/{id}/commands/{cid}/outcome"),
        &json!({"status": "rejected", "message": "late"}),
    );
    let list = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    assert_eq!(list[0]["status"], "applied");
    assert_eq!(list[0]["applied_step"], 41);
    assert_eq!(list[0]["command"], json!({"kind": "set_lr", "lr": 0.003}));
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let names: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["set_lr:queued", "set_lr:delivered", "set_lr:applied"]
    );
    // Nothing is open any more.
    assert_eq!(
        app.get_with_token(&format!("/api/v1/runs/{id}/commands/pending"))
            .body,
        json!([])
    );
}

#[test]
fn a_long_poll_wakes_when_a_command_is_issued() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    std::thread::scope(|s| {
        let poll = s.spawn(|| {
            app.get_with_token(&format!("/api/v1/runs/{id}/commands/pending?wait_ms=20000"))
        });
        std::thread::sleep(Duration::from_millis(200));
        app.post(
            &format!("/api/v1/runs/{id}/commands"),
            &json!({"kind": "pause"}),
        );
        let r = poll.join().unwrap();
        assert_eq!(r.body[0]["command"]["kind"], "pause", "{}", r.body);
    });
}

#[test]
fn commands_the_server_can_judge_are_refused_before_queueing() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    for (body, status) in [
        (json!({"kind": "set_lr", "lr": -1}), 422),
        (json!({"kind": "set_lr", "lr": "fast"}), 422),
        (json!({"kind": "explode"}), 422),
        (json!({"kind": "set_data_mix", "weights": {"code": 0}}), 422),
        (json!({"lr": 1}), 422),
    ] {
        let r = app.post(&format!("/api/v1/runs/{id}/commands"), &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let r = app.post_raw(
        &format!("/api/v1/runs/{id}/commands"),
        br#"{"kind":"pause"}"#,
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        app.get(&format!("/api/v1/runs/{id}/commands")).body,
        json!([])
    );
    app.post(
        &format!("/api/v1/runs/{id}/status"),
        &json!({"status": "finished"}),
    );
    let r = app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn a_silent_trainer_shows_as_lost_and_running_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::on(dir.path().join("k.db"), |c| {
        c.lost_after = Duration::from_millis(300)
    });
    let id = app.create_run("r", 2);
    let status = || app.get(&format!("/api/v1/runs/{id}")).body["status"].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status() != "lost" {
        assert!(Instant::now() < deadline, "never marked lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    assert_eq!(status(), "running");
    let _ = TOKEN;
}

#[test]
fn a_queued_command_survives_a_server_restart_and_reaches_a_reconnecting_trainer() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let r = app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "set_grad_clip", "max_norm": 0.5}),
    );
    let cid = r.body["id"].as_i64().unwrap();
    // Delivered once before the restart, never applied: it must come again.
    let first = app.get_with_token(&format!("/api/v1/runs/{id}/commands/pending"));
    assert_eq!(first.body[0]["id"], cid);
    let db = app.db.clone();
    let dir = app.stop();
    let app = TestApp::on(db, |_| {});
    let again = app.get_with_token(&format!("/api/v1/runs/{id}/commands/pending?after=0"));
    assert_eq!(again.body[0]["id"], cid, "{}", again.body);
    assert_eq!(again.body[0]["status"], "delivered");
    drop(dir);
}
