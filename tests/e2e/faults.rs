//! A real trainer while its server is killed with SIGKILL, three times, and started again on
//! the same database: every step is stored exactly once, every summary level is exact, and a
//! command queued just before a kill is applied exactly once.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Process, TOKEN, free_addr, spawn_training, steps_of, tiny, wait_for};

fn stored(server: &Process, run: i64) -> u64 {
    server.get(&format!("/api/v1/runs/{run}"))["steps"]
        .as_u64()
        .unwrap_or(0)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn a_trainer_survives_its_server_killed_three_times_and_nothing_is_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let addr = free_addr();
    let mut server = Process::start(&db, addr);
    let total = 1500;
    let (_, trainer) = spawn_training(tiny(&server.url, dir.path(), total));
    let run = loop {
        if let Some(id) = server.get("/api/v1/runs")[0]["id"].as_i64() {
            break id;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut command = None;
    for kill in 1..=3u64 {
        let at = kill * total / 4;
        wait_for(120, &format!("step {at}"), || stored(&server, run) >= at);
        if kill == 2 {
            // Queued, then the server dies before (or while) the trainer takes it.
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .new_agent();
            let mut resp = agent
                .post(&format!("{}/api/v1/runs/{run}/commands", server.url))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .send_json(json!({"kind": "set_lr", "multiplier": 0.5}))
                .unwrap();
            assert_eq!(resp.status(), 202);
            let body: Value = resp.body_mut().read_json().unwrap();
            command = body["id"].as_i64();
        }
        server.kill();
        std::thread::sleep(Duration::from_millis(700));
        server = Process::start(&db, addr);
    }
    let summary = trainer.join().unwrap().unwrap();
    assert_eq!(summary.steps, total);
    wait_for(60, "every step", || stored(&server, run) >= total);

    // Every step exactly once, on the one branch.
    let loss = server.get(&format!("/api/v1/runs/{run}/scalars/loss?points=100000"));
    let steps = steps_of(&loss);
    let first = steps[0];
    assert_eq!(steps, (first..first + total).collect::<Vec<_>>());
    assert_eq!(stored(&server, run), total);

    // The command: applied once, at one step, and the LR halved there and only there.
    let id = command.expect("the command was queued");
    let commands = server.get(&format!("/api/v1/runs/{run}/commands"));
    let c = commands
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_i64() == Some(id))
        .expect("the command is listed");
    assert_eq!(c["status"], "applied", "{c}");
    let lr = floats(&server.get(&format!("/api/v1/runs/{run}/scalars/lr?points=100000"))["last"]);
    let halvings: Vec<usize> = (1..lr.len())
        .filter(|&i| (lr[i] / lr[i - 1] - 0.5).abs() < 1e-6)
        .collect();
    assert_eq!(halvings.len(), 1, "the LR was halved at {halvings:?}");
    assert_eq!(
        steps[halvings[0]],
        c["applied_step"].as_u64().unwrap(),
        "the step it was applied at is the first with the new LR: {c}"
    );

    // Every summary level agrees with the steps it summarises.
    server.kill();
    crate::harness::assert_summaries_exact(&db, total);
}
