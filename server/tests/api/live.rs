//! The live stream: new steps arrive, a reconnect resumes exactly, shutdown does not hang.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, step};

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    event: String,
    id: String,
    pub data: Value,
}

/// Opens the live stream of `run` and hands each event to the returned channel.
pub fn subscribe(app: &TestApp, run: i64, last_id: Option<&str>) -> mpsc::Receiver<Sse> {
    let mut req = app.agent.get(&app.url(&format!("/api/v1/runs/{run}/live")));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    events_of(resp)
}

/// Hands each event of an SSE response to the returned channel.
fn events_of(resp: ureq::http::Response<ureq::Body>) -> mpsc::Receiver<Sse> {
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

/// The events of `/api/v1/live` as (name, data), read on a thread.
pub fn all_runs_stream(app: &TestApp) -> mpsc::Receiver<(String, Value)> {
    let resp = app.agent.get(&app.url("/api/v1/live")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(v).unwrap_or(Value::Null);
                if tx.send((name.clone(), data)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The data of the next `name` event of an [`all_runs_stream`].
pub fn next_named(rx: &mpsc::Receiver<(String, Value)>, name: &str) -> Value {
    loop {
        let (event, data) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no `{name}` event within 20 s"));
        if event == name {
            return data;
        }
    }
}

pub fn next(rx: &mpsc::Receiver<Sse>, event: &str) -> Sse {
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("an event within 20 s");
        if e.event == event {
            return e;
        }
    }
}

pub fn steps_of(e: &Sse) -> Vec<u64> {
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
    let app = TestApp::on_temp(|c| c.lost_after = Duration::from_millis(200));
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    next(&rx, "hello");
    assert_eq!(next(&rx, "status").data["status"], "lost");
    assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    assert_eq!(next(&rx, "status").data["status"], "running");
    assert_eq!(steps_of(&next(&rx, "steps")), vec![0]);
}

#[test]
fn a_reconnect_that_missed_more_than_the_backlog_is_told_to_resync() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let rx = subscribe(&app, id, None);
    let hello = next(&rx, "hello");
    // 2,500 steps in 25 batches, more than the 2,000 a reconnect is sent again.
    for b in 0..25u64 {
        let batch: Vec<Value> = (b * 100..(b + 1) * 100)
            .map(|s| step(s, json!(1.0), 2))
            .collect();
        assert_eq!(app.ingest(id, json!(batch)).status, 200);
    }
    let late = subscribe(&app, id, Some(&hello.id));
    let first = late.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first.event, "resync", "{first:?}");
    // Its id is the present: resuming from it misses nothing and repeats nothing.
    let again = subscribe(&app, id, Some(&first.id));
    assert_eq!(
        app.ingest(id, json!([step(2500, json!(2.0), 2)])).status,
        200
    );
    assert_eq!(steps_of(&next(&again, "steps")), vec![2500]);
}

#[test]
fn a_client_that_stops_reading_is_told_to_resync_instead_of_being_buffered_for() {
    use std::io::{Read, Write};
    let app = TestApp::spawn();
    let layers = 1000;
    let id = app.create_run("wide", layers);
    // A raw connection that reads the answer's head and then nothing.
    let mut conn = std::net::TcpStream::connect(app.addr).unwrap();
    write!(
        conn,
        "GET /api/v1/runs/{id}/live HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 256];
    let _ = conn.read(&mut head).unwrap();
    // ~20 KB per step message: 3,000 of them are far more than the socket buffers hold and
    // more than the hub keeps (1,024 messages) for a subscriber that does not keep up.
    let row: Vec<f64> = (0..layers).map(|l| 1.0 + l as f64 / 7.0).collect();
    for s in 0..3000u64 {
        let batch = json!([{"step": s, "layers": {"hidden_var": row}}]);
        assert_eq!(app.ingest(id, batch).status, 200);
    }
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let found = loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended without a resync");
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(13).any(|w| w == b"event: resync") {
            break true;
        }
        // Keep only a tail to search, not the whole stream.
        if seen.len() > 1 << 20 {
            seen.drain(..seen.len() - 64);
        }
    };
    assert!(found);
}

/// Opens the multiplexed stream of several runs.
fn subscribe_runs(app: &TestApp, list: &str) -> mpsc::Receiver<Sse> {
    let resp = app
        .agent
        .get(&app.url(&format!("/api/v1/live/runs?runs={list}")))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    events_of(resp)
}

#[test]
fn one_stream_follows_several_runs_and_resumes_each_from_its_own_cursor() {
    let app = TestApp::spawn();
    let a = app.create_run("a", 2);
    let b = app.create_run("b", 2);
    let rx = subscribe_runs(&app, &format!("{a},{b}"));
    let hellos = [next(&rx, "hello"), next(&rx, "hello")];
    let mut runs: Vec<&str> = hellos
        .iter()
        .map(|h| h.id.split(':').next().unwrap())
        .collect();
    runs.sort();
    assert_eq!(runs, [a.to_string(), b.to_string()]);
    assert_eq!(app.ingest(a, json!([step(0, json!(1.0), 2)])).status, 200);
    assert_eq!(app.ingest(b, json!([step(0, json!(2.0), 2)])).status, 200);
    let first = next(&rx, "steps");
    let second = next(&rx, "steps");
    let at = |e: &Sse| {
        e.id.split_once(':')
            .map(|(r, c)| (r.parse::<i64>().unwrap(), c.to_owned()))
            .unwrap()
    };
    let (ra, ca) = if at(&first).0 == a {
        (at(&first), at(&second))
    } else {
        (at(&second), at(&first))
    };
    assert_eq!((ra.0, ca.0), (a, b));
    // Steps each run got while nobody listened; resuming with both cursors sends exactly those.
    assert_eq!(app.ingest(a, json!([step(1, json!(1.0), 2)])).status, 200);
    assert_eq!(
        app.ingest(b, json!([step(1, json!(2.0), 2)]).clone())
            .status,
        200
    );
    let again = subscribe_runs(&app, &format!("{a}:{},{b}:{}", ra.1, ca.1));
    let mut got: Vec<(i64, Vec<u64>)> = (0..2)
        .map(|_| {
            let e = next(&again, "steps");
            (at(&e).0, steps_of(&e))
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(a, vec![1]), (b, vec![1])]);
}

#[test]
fn a_multiplexed_stream_refuses_a_bad_list_before_it_starts() {
    let app = TestApp::spawn();
    let a = app.create_run("a", 2);
    let many: Vec<String> = (1..=65).map(|i| i.to_string()).collect();
    for (list, status) in [
        ("x".to_owned(), 400),
        (format!("{a},{a}"), 400),
        (format!("{a}:nope"), 400),
        (many.join(","), 400),
        ("99".to_owned(), 404),
        (String::new(), 400),
    ] {
        let r = app.get(&format!("/api/v1/live/runs?runs={list}"));
        assert_eq!(r.status, status, "{list}: {}", r.body);
    }
    let r = app.get("/api/v1/live/runs");
    assert_eq!(r.status, 400);
}

#[test]
fn a_running_run_that_stops_stepping_raises_stalled_once_per_stall() {
    let app = TestApp::on_temp(|c| c.stall_min = Duration::from_millis(400));
    let id = app.create_run("r", 2);
    let batch = |range: std::ops::Range<u64>| -> Value {
        json!(
            range
                .map(|s| json!({"step": s, "scalars": {"loss": 1.0, "step_time_s": 0.001}}))
                .collect::<Vec<_>>()
        )
    };
    assert_eq!(app.ingest(id, batch(0..20)).status, 200);
    let stalls = || -> Vec<Value> {
        let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "stalled")
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stalls().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no stalled alert");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let first = stalls();
    assert_eq!(first.len(), 1, "once per stall: {first:?}");
    assert_eq!(first[0]["step"], 19);
    assert!(
        first[0]["message"]
            .as_str()
            .unwrap()
            .contains("after step 19"),
        "{}",
        first[0]
    );
    // It steps again, then stalls again: a second alert.
    assert_eq!(app.ingest(id, batch(20..30)).status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stalls().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second stalled alert"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stalls()[1]["step"], 29);
    assert_eq!(
        app.get(&format!("/api/v1/runs/{id}")).body["status"],
        "running"
    );
}
