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
fn an_anneal_past_the_runs_max_seq_len_is_refused_before_queueing() {
    let app = TestApp::spawn();
    let run = |name: &str, model: serde_json::Value| {
        let r = app.post(
            "/api/v1/runs",
            &json!({"name": name, "layers": 2, "config": {"model": model}}),
        );
        r.body["id"].as_i64().unwrap()
    };
    let anneal = |id: i64, len: u32| {
        app.post(
            &format!("/api/v1/runs/{id}/commands"),
            &json!({"kind": "anneal", "steps": 100, "final_lr": 0.0, "shape": "linear", "seq_len": len}),
        )
    };
    let capped = run("capped", json!({"seq_len": 128, "max_seq_len": 512}));
    let r = anneal(capped, 28_672);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("model.max_seq_len of 512"),
        "{}",
        r.body
    );
    assert_eq!(anneal(capped, 512).status, 202);
    // keel's trainer writes null for "no longer than seq_len".
    let fixed = run("fixed", json!({"seq_len": 128, "max_seq_len": null}));
    assert_eq!(anneal(fixed, 129).status, 422);
    // A config that says nothing of it is the trainer's to judge.
    let other = run("other", json!({"hidden": 64}));
    assert_eq!(anneal(other, 28_672).status, 202);
}

#[test]
fn a_silent_trainer_shows_as_lost_and_running_again_when_it_returns() {
    let app = TestApp::on_temp(|c| c.lost_after = Duration::from_millis(300));
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

/// Steps 0..n of a loss with 1 % noise and a doubling at each step of `spikes`.
pub fn spiky_losses(range: std::ops::Range<u64>, spikes: &[u64]) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = range
        .map(|s| {
            // Deterministic noise: a hash of the step, about ±1 %.
            let h = (s.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64;
            let mut loss = 2.0 * (1.0 + 0.02 * (h - 0.5));
            if spikes.contains(&s) {
                loss *= 2.0;
            }
            serde_json::json!({"step": s, "scalars": {"loss": loss}})
        })
        .collect();
    serde_json::json!(steps)
}

#[test]
fn a_rule_issues_its_command_when_its_alert_fires_within_its_cooldown_and_count() {
    use serde_json::json;
    let app = crate::helpers::TestApp::spawn();
    let id = app.create_run("r", 1);
    let rules = json!({"rules": [{"on": "loss_spike", "do": {"kind": "set_lr", "multiplier": 0.5},
                                  "cooldown_steps": 100, "max_firings": 2}]});
    let r = app.put(&format!("/api/v1/runs/{id}/rules"), &rules);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get(&format!("/api/v1/runs/{id}/rules")).body, rules);
    let spikes = [300, 700, 1100];
    assert_eq!(app.ingest(id, spiky_losses(0..1400, &spikes)).status, 200);
    let commands = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    let commands = commands.as_array().unwrap();
    assert_eq!(commands.len(), 2, "two firings at most: {commands:?}");
    assert!(
        commands
            .iter()
            .all(|c| c["issued_by"] == "rule:0" && c["command"]["kind"] == "set_lr")
    );
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let fired: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rule")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(fired, vec![300, 700]);
}

#[test]
fn a_runs_config_can_bring_its_rules_and_bad_rules_are_refused() {
    use serde_json::json;
    let app = crate::helpers::TestApp::spawn();
    let spec = json!({"name": "r", "layers": 1, "config": {"alerts": {
        "spike_sigmas": 4.5,
        "rules": [{"on": "loss_spike", "do": {"kind": "pause"}}]}}});
    let id = app.post("/api/v1/runs", &spec).body["id"].as_i64().unwrap();
    assert_eq!(app.ingest(id, spiky_losses(0..400, &[300])).status, 200);
    let commands = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    assert_eq!(commands[0]["issued_by"], "rule:0", "{commands}");
    assert_eq!(commands[0]["command"]["kind"], "pause");
    let rule = |on: &str, action: serde_json::Value| json!({"rules": [{"on": on, "do": action}]});
    for (body, status) in [
        (rule("loss_party", json!({"kind": "pause"})), 422),
        (
            rule(
                "loss_spike",
                json!({"kind": "set_lr", "lr": 1.0, "multiplier": 2.0}),
            ),
            422,
        ),
        (
            json!({"rules": [{"on": "loss_spike", "do": {"kind": "pause"}, "max_firings": 0}]}),
            422,
        ),
        (
            json!({"rules": (0..33).map(|_| json!({"on": "stalled", "do": {"kind": "pause"}})).collect::<Vec<_>>()}),
            422,
        ),
        (
            json!({"rules": [{"on": "loss_spike", "do": {"kind": "pause"}, "colour": 1}]}),
            422,
        ),
    ] {
        let r = app.put(&format!("/api/v1/runs/{id}/rules"), &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let r = app.put("/api/v1/runs/99/rules", &json!({"rules": []}));
    assert_eq!(r.status, 404);
    let r = app.put_raw(
        &format!("/api/v1/runs/{id}/rules"),
        b"{\"rules\": []}",
        None,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn a_rules_rewind_without_a_step_goes_back_to_before_the_alert() {
    use serde_json::json;
    let app = crate::helpers::TestApp::spawn();
    let id = app.create_run("r", 1);
    let rules =
        json!({"rules": [{"on": "loss_spike", "do": {"kind": "rewind", "skip_batches": 20}}]});
    assert_eq!(
        app.put(&format!("/api/v1/runs/{id}/rules"), &rules).status,
        200
    );
    assert_eq!(app.ingest(id, spiky_losses(0..400, &[300])).status, 200);
    let commands = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    assert_eq!(
        commands[0]["command"],
        json!({"kind": "rewind", "before_step": 300, "skip_batches": 20})
    );
}
