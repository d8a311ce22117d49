//! The server link: spilling while the server is away, re-sending when it is back, and the
//! command round trip through a whole `train` call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use keel_protocol::{Command, IngestBatch, Metric, StepRecord};
use keel_trainer::link::{Link, Spill};
use keel_trainer::{TrainOptions, train};

use crate::fake_server::{FakeServer, Request, command};

fn record(step: u64, loss: f64) -> StepRecord {
    StepRecord {
        step,
        time: Some(1.0),
        tokens: Some(step * 10),
        scalars: BTreeMap::from([("loss".to_string(), Metric::new(loss))]),
        layers: BTreeMap::from([(
            "hidden_var".to_string(),
            vec![Metric(1.0), Metric(f64::INFINITY)],
        )]),
    }
}

/// Step numbers of every step batch the server received, in arrival order.
fn steps_received(requests: &[Request]) -> Vec<u64> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/steps"))
        .flat_map(|r| {
            r.body["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["step"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn the_spill_file_round_trips_batches_with_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let spill = Spill::new(&dir.path().join("sub/spill.jsonl"));
    assert!(spill.is_empty());
    let a = IngestBatch {
        branch: Some(0),
        steps: vec![record(0, f64::NAN), record(1, 2.0)],
    };
    let b = IngestBatch {
        branch: Some(1),
        steps: vec![record(1, f64::NEG_INFINITY)],
    };
    spill.append(&a).unwrap();
    spill.append(&b).unwrap();
    assert_eq!(spill.read().unwrap(), vec![a, b.clone()]);
    spill.rewrite(std::slice::from_ref(&b)).unwrap();
    assert_eq!(spill.read().unwrap(), vec![b]);
    spill.rewrite(&[]).unwrap();
    assert!(spill.is_empty() && !spill.path().exists());
}

#[test]
fn steps_sent_while_the_server_is_away_are_spilled_and_all_arrive_once_it_is_back() {
    // A port with nothing listening: every connection is refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spill_path = dir.path().join("spill.jsonl");
    let mut link = Link::spawn(
        &format!("http://{addr}"),
        Some("secret".into()),
        7,
        spill_path.clone(),
    );
    for s in 0..40 {
        link.step(0, record(s, 1.0));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Spill::new(&spill_path)
        .read()
        .unwrap()
        .iter()
        .map(|b| b.steps.len())
        .sum::<usize>()
        < 40
    {
        assert!(Instant::now() < deadline, "steps were not spilled");
        std::thread::sleep(Duration::from_millis(20));
    }

    let server = FakeServer::start(&addr.to_string());
    for s in 40..60 {
        link.step(1, record(s, 1.0));
    }
    let report = link.finish(Duration::from_secs(15));
    assert_eq!(report.steps_spilled, 0, "{report:?}");
    let mut got = steps_received(&server.requests());
    got.sort();
    assert_eq!(got, (0..60).collect::<Vec<_>>());
    let steps: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/runs/7/steps")
        .collect();
    assert!(
        steps
            .iter()
            .all(|r| r.auth.as_deref() == Some("Bearer secret"))
    );
    assert!(steps.iter().any(|r| r.body["branch"] == 1));
    assert!(!spill_path.exists());
}

#[test]
fn a_run_with_a_server_applies_commands_once_reports_outcomes_and_pauses_until_resumed() {
    let server = FakeServer::start("127.0.0.1:0");
    {
        let mut st = server.state.lock().unwrap();
        st.pending = vec![
            command(
                1,
                Command::SetLr {
                    lr: None,
                    multiplier: Some(0.5),
                },
            ),
            command(
                2,
                Command::SetDataMix {
                    weights: BTreeMap::from([("poetry".into(), 1.0)]),
                },
            ),
            command(3, Command::Pause),
        ];
        st.after_outcome = vec![(3, command(4, Command::Resume))];
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        config: concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/proxy-tiny.toml").into(),
        server: Some(server.url()),
        token: Some("secret".into()),
        device: "cpu".into(),
        steps: Some(30),
        checkpoint_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let summary = train(opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!((summary.run_id, summary.steps), (Some(7), 30));

    let reqs = server.requests();
    let mut got = steps_received(&reqs);
    got.sort();
    got.dedup();
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    let outcome = |id: i64| -> serde_json::Value {
        let path = format!("/api/v1/runs/7/commands/{id}/outcome");
        reqs.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no outcome for {id}"))
            .body
            .clone()
    };
    assert_eq!(outcome(1)["status"], "applied");
    assert_eq!(outcome(2)["status"], "rejected");
    assert!(outcome(2)["message"].as_str().unwrap().contains("poetry"));
    assert_eq!(
        (outcome(3)["status"].as_str(), outcome(4)["status"].as_str()),
        (Some("applied"), Some("applied"))
    );
    let statuses: Vec<String> = reqs
        .iter()
        .filter(|r| r.path == "/api/v1/runs/7/status")
        .map(|r| r.body["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["paused", "running", "finished"]);
    let created = reqs.iter().find(|r| r.path == "/api/v1/runs").unwrap();
    assert_eq!(created.body["layers"], 2);
}
