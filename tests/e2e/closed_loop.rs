//! The loop closed with a real trainer: a stretch of corrupted batches gives a real loss
//! spike; the run's rule `on loss_spike → rewind, skip` fires; the trainer goes back to the
//! newest checkpoint before the spike and skips past the bad batches; the live branch's loss
//! is back at its level while the spiked stretch stays stored as the abandoned branch.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, spawn_training, tiny};

fn values(v: &Value, field: &str) -> Vec<f64> {
    v[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn a_rule_rewinds_past_a_real_loss_spike_and_the_run_heals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    // The built-in drill (configs/spike-drill.toml): proxy-tiny with batches 300–304 corrupted
    // and the rule `on loss_spike → rewind, skip 60`, as `keel demo` runs it.
    let mut opts = tiny(&server.url(), dir.path(), 600);
    opts.config = "spike-drill".into();
    let (_, handle) = spawn_training(opts);
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary.steps, 600);
    let run = summary.run_id.unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // The rule fired once, and the trainer applied its rewind.
    let commands = server.get(&format!("/api/v1/runs/{run}/commands"));
    let commands = commands.as_array().unwrap();
    assert_eq!(commands.len(), 1, "{commands:?}");
    let c = &commands[0];
    assert_eq!(
        (c["issued_by"].as_str(), c["status"].as_str()),
        (Some("rule:0"), Some("applied")),
        "{c}"
    );
    assert_eq!(c["command"]["before_step"], 300, "{c}");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("at step 250"),
        "back to the checkpoint before the spike: {message}"
    );

    // The abandoned branch keeps the spike; the live one has none.
    let detail = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(detail["branch"], 1, "{detail}");
    let spiked = server.get(&format!(
        "/api/v1/runs/{run}/scalars/loss?branch=0&from=280&to=320&points=100"
    ));
    let healed = server.get(&format!(
        "/api/v1/runs/{run}/scalars/loss?from=280&to=320&points=100"
    ));
    let before = values(
        &server.get(&format!(
            "/api/v1/runs/{run}/scalars/loss?from=200&to=249&points=100"
        )),
        "mean",
    );
    let level = before.iter().sum::<f64>() / before.len() as f64;
    let top = |v: &Value| values(v, "max").into_iter().fold(0.0, f64::max);
    assert!(
        top(&spiked) > 1.5 * level,
        "the corrupted batches spiked: {} against {level}",
        top(&spiked)
    );
    assert!(
        top(&healed) < 1.3 * level,
        "the live branch is healed: {} against {level}",
        top(&healed)
    );
    let events = server.get(&format!("/api/v1/runs/{run}/events"));
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .filter(|(k, _)| *k == "alert" || *k == "rule")
        .collect();
    assert!(
        kinds.contains(&("alert", "loss_spike")) && kinds.contains(&("rule", "rule:0")),
        "{kinds:?}"
    );
}
