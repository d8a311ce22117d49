//! Two `keel serve` on one PostgreSQL database and a real trainer: it streams to one server
//! while an operator steers it through the other, which sees every step as it comes.
//! (`KEEL_SKIP_POSTGRES=1` skips it.)

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::harness::{
    Postgres, Server, assert_no_steps_while_paused, spawn_training, steps_stored, tiny, wait_for,
};

#[test]
fn a_trainer_streaming_to_one_server_is_paused_and_resumed_through_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pg) = Postgres::up(&format!("{}/replicas", dir.path().display())) else {
        return;
    };
    let a = Server::on(pg.at.clone(), "127.0.0.1:0".parse().unwrap());
    let b = Server::on(pg.at.clone(), "127.0.0.1:0".parse().unwrap());
    let (stop, handle) = spawn_training(tiny(&a.url(), dir.path(), 100_000));
    let first = || b.get("/api/v1/runs")[0]["id"].as_i64();
    wait_for(120, "the first steps, seen through B", || {
        first().is_some_and(|r| steps_stored(&b, r) >= 5)
    });
    let run = first().unwrap();
    let commands = format!("/api/v1/runs/{run}/commands");
    b.post(&commands, &json!({"kind": "pause"}));
    wait_for(60, "the pause, applied by the trainer polling A", || {
        b.get(&commands)[0]["status"] == "applied"
    });
    wait_for(30, "the paused status on B", || {
        b.get(&format!("/api/v1/runs/{run}"))["status"] == "paused"
    });
    assert_no_steps_while_paused(&b, run);
    let paused_at = steps_stored(&b, run);
    b.post(&commands, &json!({"kind": "resume"}));
    wait_for(60, "steps after resuming through B", || {
        steps_stored(&b, run) > paused_at + 3
    });
    stop.store(true, Ordering::SeqCst);
    let summary = handle.join().unwrap().unwrap();
    // Both servers tell the same story of the run.
    let detail = format!("/api/v1/runs/{run}");
    wait_for(30, "both servers to agree", || {
        a.get(&detail) == b.get(&detail)
    });
    let series = format!("/api/v1/runs/{run}/scalars/loss?points=100");
    assert_eq!(a.get(&series), b.get(&series));
    assert!(summary.steps > paused_at, "{summary:?}");
    a.stop();
    b.stop();
}
