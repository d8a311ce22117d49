//! The live stream: new steps arrive, a reconnect resumes exactly, shutdown does not hang.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, step};

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// Opens the live stream of `run` and hands each event to the returned channel.
fn subscribe(app: &TestApp, run: i64, last_id: Option<&str>) -> mpsc::Receiver<Sse> {
    let mut req = app.agent.get(&app.url(&format!("/api/v1/runs/{run}/live")));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut cur = Sse {
            event: String::new(),
            id: String::new(),
            data: Value::Null,
        };
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("event: ") {
                cur.event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                cur.id = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                cur.data = serde_json::from_str(v).unwrap_or(Value::Null);
            } else if line.is_empty() && !cur.event.is_empty() {
                if tx.send(cur.clone()).is_err() {
                    return;
                }
                cur.event.clear();
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<Sse>, event: &str) -> Sse {
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("an event within 20 s");
        if e.event == event {
            return e;
        }
    }
}

fn steps_of(e: &Sse) -> Vec<u64> {
    e.data["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_subscriber_sees_new_steps_as_they_are_stored() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    next(&rx, "hello");
    assert_eq!(
        app.ingest(
            id,
            json!([step(0, json!("NaN"), 2), step(1, json!(2.0), 2)])
        )
        .status,
        200
    );
    let e = next(&rx, "steps");
    assert_eq!(steps_of(&e), vec![0, 1]);
    assert_eq!(e.data["steps"][0]["scalars"]["loss"], "NaN");
    assert_eq!(
        e.data["steps"][1]["layers"]["hidden_var"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_reconnect_with_last_event_id_backfills_exactly_what_was_missed() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    let hello = next(&rx, "hello");
    assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    let seen = next(&rx, "steps");
    assert_eq!(steps_of(&seen), vec![0]);
    drop(rx);
    // While away: more steps and a status change.
    assert_eq!(
        app.ingest(id, json!([step(1, json!(1.0), 2), step(2, json!(1.0), 2)]))
            .status,
        200
    );
    let r = app.post(
        &format!("/api/v1/runs/{id}/status"),
        &json!({"status": "paused", "step": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rx = subscribe(&app, id, Some(&seen.id));
    assert_eq!(steps_of(&next(&rx, "steps")), vec![1]);
    assert_eq!(steps_of(&next(&rx, "steps")), vec![2]);
    assert_eq!(next(&rx, "event").data["event"]["name"], "paused");
    // Resuming from the very first id gets everything, including step 0.
    let rx = subscribe(&app, id, Some(&hello.id));
    assert_eq!(steps_of(&next(&rx, "steps")), vec![0]);
}

#[test]
fn shutdown_ends_open_streams_instead_of_hanging() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    next(&rx, "hello");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        app.stop();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the server stopped");
}

#[test]
fn command_states_arrive_live_beside_their_audit_events() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    next(&rx, "hello");
    app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
    );
    assert_eq!(next(&rx, "event").data["event"]["name"], "pause:queued");
    let c = next(&rx, "command");
    assert_eq!(
        (
            c.data["command"]["status"].clone(),
            c.data["command"]["command"]["kind"].clone()
        ),
        (json!("queued"), json!("pause"))
    );
}

#[test]
fn a_lost_run_that_sends_steps_again_is_running_and_its_steps_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::on(dir.path().join("k.db"), |c| {
        c.lost_after = Duration::from_millis(200)
    });
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    next(&rx, "hello");
    assert_eq!(next(&rx, "status").data["status"], "lost");
    assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    assert_eq!(next(&rx, "status").data["status"], "running");
    assert_eq!(steps_of(&next(&rx, "steps")), vec![0]);
}
