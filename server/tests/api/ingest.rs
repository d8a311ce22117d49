use serde_json::json;

use crate::helpers::{TestApp, step};

#[test]
fn a_created_run_is_listed_and_shown() {
    let app = TestApp::spawn();
    let id = app.create_run("first", 4);
    let list = app.get("/api/v1/runs");
    assert_eq!(list.status, 200);
    assert_eq!(list.body[0]["id"], id);
    assert_eq!(list.body[0]["status"], "running");
    let one = app.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(one.body["name"], "first");
    assert_eq!(one.body["config"]["lr"], 0.01);
    assert_eq!(one.body["layers"], 4);
}

#[test]
fn ingested_steps_read_back_exactly_one_step_per_bucket() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 3);
    let steps: Vec<_> = (0..50)
        .map(|s| step(s, json!(5.0 - s as f64 * 0.01), 3))
        .collect();
    let r = app.ingest(id, json!(steps));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"accepted": 50, "duplicates": 0, "branch": 0})
    );
    let loss = app
        .get(&format!("/api/v1/runs/{id}/scalars/loss?points=100"))
        .body;
    assert_eq!(loss["step"].as_array().unwrap().len(), 50);
    assert_eq!(loss["last"][10], json!(5.0 - 0.1));
    assert_eq!(loss["min"][10], loss["max"][10]);
    let m = app
        .get(&format!("/api/v1/runs/{id}/layers/hidden_var?columns=1000"))
        .body;
    assert_eq!(m["layers"], 3);
    assert_eq!(m["mean"][49][2], json!(1.0 + 2.0 * 0.1 + 49.0 * 0.001));
    let detail = app.get(&format!("/api/v1/runs/{id}")).body;
    assert_eq!(detail["last_step"], 49);
    assert_eq!(detail["tokens"], 49 * 1024);
    assert_eq!(detail["layer_stats"], json!(["hidden_var"]));
}

#[test]
fn re_sent_steps_are_stored_once() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let batch: Vec<_> = (0..20).map(|s| step(s, json!(1.0), 2)).collect();
    assert_eq!(app.ingest(id, json!(batch)).body["accepted"], 20);
    let again: Vec<_> = (10..30).map(|s| step(s, json!(2.0), 2)).collect();
    let r = app.ingest(id, json!(again)).body;
    assert_eq!(
        (r["accepted"].clone(), r["duplicates"].clone()),
        (json!(10), json!(10))
    );
    let loss = app
        .get(&format!("/api/v1/runs/{id}/scalars/loss?points=1"))
        .body;
    // One bucket over 30 steps: 20 ones (the first write wins) and 10 twos.
    assert_eq!(loss["mean"][0].as_f64().unwrap(), (20.0 + 20.0) / 30.0);
    assert_eq!(app.get(&format!("/api/v1/runs/{id}")).body["steps"], 30);
}

#[test]
fn a_batch_with_a_nan_loss_reads_back_as_nan() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let mut s = step(3, json!("NaN"), 2);
    s["scalars"]["grad_norm"] = json!("Infinity");
    s["layers"]["hidden_var"] = json!(["-Infinity", 2.5]);
    assert_eq!(
        app.ingest(id, json!([step(2, json!(1.0), 2), s])).status,
        200
    );
    let loss = app.get(&format!("/api/v1/runs/{id}/scalars/loss")).body;
    assert_eq!(loss["last"], json!([1.0, "NaN"]));
    let g = app
        .get(&format!("/api/v1/runs/{id}/scalars/grad_norm"))
        .body;
    assert_eq!(g["max"], json!(["Infinity"]));
    let m = app
        .get(&format!("/api/v1/runs/{id}/layers/hidden_var"))
        .body;
    assert_eq!(m["min"][1], json!(["-Infinity", 2.5]));
    // The run's latest loss is NaN too, not null.
    assert_eq!(
        app.get(&format!("/api/v1/runs/{id}")).body["last_loss"],
        "NaN"
    );
}

#[test]
fn a_one_step_spike_survives_every_zoom_level() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let steps: Vec<_> = (0..20_000u64)
        .map(|s| {
            let loss = if s == 12_345 {
                json!(1000.0)
            } else {
                json!(2.0)
            };
            json!({"step": s, "scalars": {"loss": loss}})
        })
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    for points in [1, 7, 100, 333, 2000, 20_000] {
        let loss = app
            .get(&format!("/api/v1/runs/{id}/scalars/loss?points={points}"))
            .body;
        let maxes: Vec<f64> = loss["max"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let starts: Vec<u64> = loss["step"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(maxes.len() as u64 <= points, "points={points}");
        assert_eq!(starts[0], 0, "points={points}");
        // Exactly the bucket that holds step 12,345 reports the spike; every other one the
        // flat 2.0 of its steps, and its mean is no spike averaged in.
        let holder = starts.partition_point(|&s| s <= 12_345) - 1;
        for (i, max) in maxes.iter().enumerate() {
            let want = if i == holder { 1000.0 } else { 2.0 };
            assert_eq!(
                *max, want,
                "points={points}, bucket {i} from step {}",
                starts[i]
            );
            if i != holder {
                assert_eq!(loss["mean"][i], 2.0, "points={points}, bucket {i}");
            }
        }
    }
    // A zoomed window that starts and ends off the bucket grid is still exact.
    let w = app
        .get(&format!(
            "/api/v1/runs/{id}/scalars/loss?from=12001&to=19999&points=3"
        ))
        .body;
    assert_eq!(w["step"][0], 12001);
    let total: f64 = w["max"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(total, 1000.0);
}

#[test]
fn bucket_summaries_equal_a_direct_computation() {
    // Irregular values over an irregular window, compared with min/max/mean computed here.
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let value = |s: u64| ((s * 7919) % 1000) as f64 / 10.0;
    let steps: Vec<_> = (0..5000u64)
        .map(|s| json!({"step": s, "scalars": {"x": value(s)}}))
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    let r = app
        .get(&format!(
            "/api/v1/runs/{id}/scalars/x?from=37&to=4321&points=9"
        ))
        .body;
    let firsts: Vec<u64> = r["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for (i, &first) in firsts.iter().enumerate() {
        let end = firsts.get(i + 1).copied().unwrap_or(4322);
        let vals: Vec<f64> = (first..end).map(value).collect();
        let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert_eq!(r["min"][i].as_f64().unwrap(), min);
        assert_eq!(r["max"][i].as_f64().unwrap(), max);
        assert!((r["mean"][i].as_f64().unwrap() - mean).abs() < 1e-9);
        assert_eq!(r["last"][i].as_f64().unwrap(), value(end - 1));
    }
}

#[test]
fn steps_arriving_out_of_order_and_after_a_restart_keep_summaries_exact() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let batch = |range: std::ops::Range<u64>| -> Vec<serde_json::Value> {
        range
            .map(|s| json!({"step": s, "scalars": {"x": s as f64}}))
            .collect()
    };
    assert_eq!(app.ingest(id, json!(batch(100..300))).status, 200);
    let db = app.db.clone();
    let dir = app.stop();
    let app = TestApp::on(db, |_| {});
    assert_eq!(app.ingest(id, json!(batch(300..400))).status, 200);
    assert_eq!(app.ingest(id, json!(batch(0..100))).status, 200);
    let r = app
        .get(&format!("/api/v1/runs/{id}/scalars/x?points=1"))
        .body;
    assert_eq!(r["min"][0], 0.0);
    assert_eq!(r["max"][0], 399.0);
    assert_eq!(r["mean"][0], 199.5);
    assert_eq!(r["last"][0], 399.0);
    drop(dir);
}

#[test]
fn finite_values_come_back_bit_for_bit() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let values: [f64; 7] = [
        0.1 + 0.2,
        1.249,
        1e-300,
        5e-324,
        -1.7976931348623157e308,
        123456.789e-17,
        -0.0,
    ];
    let steps: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"step": i, "scalars": {"x": v}}))
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    let r = app.get(&format!("/api/v1/runs/{id}/scalars/x")).body;
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            r["last"][i].as_f64().unwrap().to_bits(),
            v.to_bits(),
            "value {v}"
        );
    }
}

#[test]
fn a_nan_loss_raises_a_stored_alert_counted_on_the_run() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let steps: Vec<_> = (0..10)
        .map(|s| step(s, if s == 7 { json!("NaN") } else { json!(2.0) }, 2))
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let alerts: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{events}");
    assert_eq!(alerts[0]["name"], "non_finite_loss");
    assert_eq!(alerts[0]["step"], 7);
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(app.get(&format!("/api/v1/runs/{id}")).body["alerts"], 1);
}

/// A distributed run's `rank_*` statistics have one value per rank; every other layer
/// statistic keeps one per block.
#[test]
fn rank_statistics_of_a_distributed_run_have_a_value_per_rank() {
    let app = TestApp::spawn();
    let r = app.post(
        "/api/v1/runs",
        &json!({"name": "ddp", "layers": 3, "ranks": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(app.get(&format!("/api/v1/runs/{id}")).body["ranks"], 2);
    let good = json!([{"step": 0, "layers": {"rank_step_time_s": [0.1, 0.3], "hidden_var": [1.0, 2.0, 3.0]}}]);
    assert_eq!(app.ingest(id, good).status, 200);
    let three = json!([{"step": 1, "layers": {"rank_step_time_s": [0.1, 0.2, 0.3]}}]);
    let r = app.ingest(id, three);
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["error"],
        "step 1: `rank_step_time_s` has 3 values; the run has 2 ranks"
    );
    let two = json!([{"step": 1, "layers": {"hidden_var": [1.0, 2.0]}}]);
    assert_eq!(app.ingest(id, two).status, 422);
    let m = app.get(&format!("/api/v1/runs/{id}/layers/rank_step_time_s"));
    assert_eq!(m.body["layers"], 2);
    assert_eq!(m.body["max"], json!([[0.1, 0.3]]));
    // Without `ranks`, a `rank_*` statistic is a layer statistic like the others.
    let plain = app.create_run("single", 3);
    assert_eq!(
        app.get(&format!("/api/v1/runs/{plain}")).body["ranks"],
        json!(null)
    );
    let one = json!([{"step": 0, "layers": {"rank_step_time_s": [0.1, 0.3]}}]);
    assert_eq!(app.ingest(plain, one).status, 422);
    for bad in [json!(0), json!(4097), json!("2")] {
        let r = app.post(
            "/api/v1/runs",
            &json!({"name": "x", "layers": 3, "ranks": bad}),
        );
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
}
