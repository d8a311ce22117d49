//! The trainer against a real server: every statistic arrives, nothing is lost or doubled
//! across a server restart, and commands reach the running trainer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_protocol::{LAYER_STATS, SCALARS};
use serde_json::json;

use crate::harness::{
    Server, assert_no_steps_while_paused, spawn_training, steps_stored, tiny, wait_for,
};

/// The `step` column of a series answer.
fn step_numbers(series: &serde_json::Value) -> Vec<u64> {
    let steps = series["step"].as_array().expect("a step column");
    steps.iter().map(|s| s.as_u64().unwrap()).collect()
}

fn first_run(server: &Server) -> Option<i64> {
    server.get("/api/v1/runs")[0]["id"].as_i64()
}

#[test]
fn a_tiny_run_streams_every_statistic_for_every_layer_and_writes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let (_, handle) = spawn_training(tiny(&server.url(), dir.path(), 60));
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary.steps, 60);
    let run = summary.run_id.expect("a run on the server");
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["steps"], 60, "{detail}");
    assert_eq!(detail["status"], "finished");
    let layers = detail["layers"].as_u64().unwrap();
    for stat in LAYER_STATS {
        let m = server.get(&format!("/api/v1/runs/{run}/layers/{stat}?columns=1000"));
        assert_eq!(m["step"].as_array().map(Vec::len), Some(60), "{stat}: {m}");
        for column in m["mean"].as_array().unwrap() {
            assert_eq!(column.as_array().unwrap().len() as u64, layers);
        }
    }
    let scalars: Vec<&str> = detail["scalars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for key in SCALARS {
        assert!(scalars.contains(&key), "{key} missing from {scalars:?}");
    }
    assert!(
        scalars.iter().any(|k| k.starts_with("loss/")),
        "no per-source loss in {scalars:?}"
    );
    let checkpoint = summary.last_checkpoint.expect("a checkpoint");
    assert!(checkpoint.exists());
}

#[test]
fn steps_sent_while_the_server_is_down_are_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let server = Server::start(&db, "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let (_, handle) = spawn_training(tiny(&server.url(), dir.path(), 400));
    wait_for(120, "the first steps", || {
        first_run(&server).is_some_and(|r| steps_stored(&server, r) >= 20)
    });
    let run = first_run(&server).unwrap();
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start(&db, addr);
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary.steps, 400);
    wait_for(60, "every step", || steps_stored(&server, run) >= 400);
    let loss = server.get(&format!("/api/v1/runs/{run}/scalars/loss?points=100000"));
    let steps = step_numbers(&loss);
    let first = steps[0];
    assert_eq!(
        steps,
        (first..first + 400).collect::<Vec<_>>(),
        "a step is missing"
    );
    assert_eq!(steps_stored(&server, run), 400);
    // A batch re-sent after the outage overwrites its steps; it must not count them twice in
    // the summaries: one bucket over the whole run has the mean of the 400 stored losses, and
    // every stored summary agrees with its steps.
    let losses: Vec<f64> = loss["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let whole = server.get(&format!("/api/v1/runs/{run}/scalars/loss?points=1"));
    let mean = whole["mean"][0].as_f64().unwrap();
    let want = losses.iter().sum::<f64>() / 400.0;
    assert!(
        (mean - want).abs() <= 1e-9 * want.abs(),
        "{mean} against {want}"
    );
    crate::harness::assert_summaries_exact(&db, 400);
}

#[test]
fn a_paused_trainer_stops_stepping_until_it_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let (stop, handle) = spawn_training(tiny(&server.url(), dir.path(), 100_000));
    wait_for(120, "the first steps", || {
        first_run(&server).is_some_and(|r| steps_stored(&server, r) >= 5)
    });
    let run = first_run(&server).unwrap();
    let cmd = server.post(
        &format!("/api/v1/runs/{run}/commands"),
        &json!({"kind": "pause"}),
    );
    let cid = cmd["id"].as_i64().unwrap();
    let commands = format!("/api/v1/runs/{run}/commands");
    wait_for(60, "the pause to apply", || {
        server.get(&commands)[0]["status"] == "applied"
    });
    assert_eq!(server.get(&commands)[0]["id"], cid);
    wait_for(30, "the paused status", || {
        server.get(&format!("/api/v1/runs/{run}"))["status"] == "paused"
    });
    assert_no_steps_while_paused(&server, run);
    let paused_at = steps_stored(&server, run);
    server.post(&commands, &json!({"kind": "resume"}));
    wait_for(60, "steps after resume", || {
        steps_stored(&server, run) > paused_at + 3
    });
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

#[test]
fn a_link_spills_while_no_server_answers_and_sends_everything_once_one_does() {
    use keel_trainer::link::{Link, Outbox, Spill};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    // Learn a free port from a first server, create the run there, then stop it.
    let server = Server::start(&db, "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let run = server.post("/api/v1/runs", &json!({"name": "spill", "layers": 2}))["id"]
        .as_i64()
        .unwrap();
    server.stop();
    let outbox = Outbox::new(dir.path(), run);
    let spill_path = outbox.spill.clone();
    let mut link = Link::spawn(
        &format!("http://{addr}"),
        Some(crate::harness::TOKEN.into()),
        outbox,
    );
    for s in 0..40 {
        link.step(0, record(s));
    }
    wait_for(30, "the steps to spill", || {
        Spill::new(&spill_path)
            .read()
            .unwrap()
            .iter()
            .map(|b| b.steps.len())
            .sum::<usize>()
            >= 40
    });
    let server = Server::start(&db, addr);
    for s in 40..60 {
        link.step(0, record(s));
    }
    let report = link.finish(Duration::from_secs(30));
    assert_eq!(report.steps_spilled, 0, "{report:?}");
    let loss = server.get(&format!("/api/v1/runs/{run}/scalars/loss?points=1000"));
    let steps = step_numbers(&loss);
    assert_eq!(steps, (0..60).collect::<Vec<_>>());
    assert_eq!(loss["last"][3], "NaN");
    assert!(!spill_path.exists());
}

fn record(step: u64) -> keel_protocol::StepRecord {
    use keel_protocol::Metric;
    let loss = if step == 3 { f64::NAN } else { 1.0 };
    keel_protocol::StepRecord {
        step,
        time: Some(1.0),
        tokens: Some(step * 10),
        scalars: [("loss".to_string(), Metric::new(loss))].into(),
        layers: [(
            "hidden_var".to_string(),
            vec![Metric(1.0), Metric(f64::INFINITY)],
        )]
        .into(),
    }
}

#[test]
fn a_new_lr_shows_in_the_lr_series_from_the_step_it_was_applied_at() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let (stop, handle) = spawn_training(tiny(&server.url(), dir.path(), 100_000));
    // proxy-tiny warms up for 10 steps to its stable LR of 0.01.
    wait_for(120, "the stable phase", || {
        first_run(&server).is_some_and(|r| steps_stored(&server, r) >= 20)
    });
    let run = first_run(&server).unwrap();
    let commands = format!("/api/v1/runs/{run}/commands");
    server.post(&commands, &json!({"kind": "set_lr", "lr": 0.002}));
    wait_for(60, "set_lr to apply", || {
        server.get(&commands)[0]["status"] == "applied"
    });
    let applied = server.get(&commands)[0]["applied_step"].as_u64().unwrap();
    wait_for(60, "steps after it", || {
        server.get(&format!("/api/v1/runs/{run}"))["last_step"]
            .as_u64()
            .unwrap()
            > applied + 5
    });
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
    let lr = server.get(&format!("/api/v1/runs/{run}/scalars/lr?points=100000"));
    let steps = step_numbers(&lr);
    for (i, step) in steps.iter().enumerate() {
        let v = lr["last"][i].as_f64().unwrap();
        if (11..applied).contains(step) {
            assert_eq!(v, 0.01, "step {step} before the command");
        } else if *step >= applied {
            assert_eq!(v, 0.002, "step {step}, applied at {applied}");
        }
    }
}
