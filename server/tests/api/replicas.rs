//! Several servers on one PostgreSQL database behave as one: what is written through one is
//! pushed live by the others, commands reach a trainer polling another server, sessions hold
//! on every server, and two servers ingesting into one run keep its summaries exact and raise
//! its alerts once.
//! (They use a PostgreSQL server whatever the suite runs on; `KEEL_SKIP_POSTGRES=1` skips.)

use std::time::{Duration, Instant};

use keel_server::storage::check;
use serde_json::{Value, json};

use crate::helpers::{PgServer, TOKEN, TestApp, TestDb, block_on, step};
use crate::live::{next, steps_of, subscribe};
use crate::sessions::{agent, post_command, raw, signed_in};

/// Two servers on one fresh database.
fn two(pg: &PgServer) -> (TestDb, TestApp, TestApp) {
    let db = pg.fresh();
    let a = TestApp::on(&db.at, |_| {});
    let b = TestApp::on(&db.at, |_| {});
    (db, a, b)
}

#[test]
fn a_step_ingested_through_one_server_is_pushed_live_by_the_other() {
    let Some(pg) = PgServer::up() else { return };
    let (_db, a, b) = two(&pg);
    let id = a.create_run("r", 2);
    let rx = subscribe(&b, id, None);
    next(&rx, "hello");
    let mut slowest = Duration::ZERO;
    for s in 0..20u64 {
        let sent = Instant::now();
        assert_eq!(a.ingest(id, json!([step(s, json!(1.0), 2)])).status, 200);
        let e = next(&rx, "steps");
        slowest = slowest.max(sent.elapsed());
        assert_eq!(steps_of(&e), vec![s]);
        assert_eq!(
            e.data["steps"][0]["layers"]["hidden_var"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    // NaN travels as NaN, through the other server too.
    assert_eq!(a.ingest(id, json!([step(20, json!("NaN"), 2)])).status, 200);
    let e = next(&rx, "steps");
    assert_eq!(e.data["steps"][0]["scalars"]["loss"], "NaN");
    // The alert the NaN raised, written by A, is B's to push too.
    let alert = next(&rx, "event");
    assert_eq!(
        alert.data["event"]["name"], "non_finite_loss",
        "{}",
        alert.data
    );
    eprintln!("slowest of 20 steps from A to B's stream: {slowest:?}");
    // A generous bound for a loaded test machine; `keel bench` measures the real figure.
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
}

#[test]
fn a_command_posted_on_one_server_reaches_a_trainer_polling_the_other() {
    let Some(pg) = PgServer::up() else { return };
    let (_db, a, b) = two(&pg);
    let id = a.create_run("r", 2);
    let url = a.url(&format!("/api/v1/runs/{id}/commands/pending?wait_ms=20000"));
    let poll = std::thread::spawn(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut resp = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap();
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (Instant::now(), body)
    });
    // The poll is waiting on A before the command goes to B.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let r = b.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "set_lr", "lr": 0.001}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let (got, body) = poll.join().unwrap();
    assert_eq!(body[0]["id"], r.body["id"], "{body}");
    assert_eq!(body[0]["status"], "delivered");
    let took = got.duration_since(sent);
    eprintln!("a command from B to a trainer polling A: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // B sees it delivered, as A does.
    let listed = b.get(&format!("/api/v1/runs/{id}/commands"));
    assert_eq!(listed.body[0]["status"], "delivered", "{}", listed.body);
}

#[test]
fn a_session_signed_in_on_one_server_holds_on_the_other() {
    let Some(pg) = PgServer::up() else { return };
    let (_db, a, b) = two(&pg);
    let id = a.create_run("r", 2);
    let (cookie, csrf) = signed_in(&a, id);
    let (status, body) = post_command(&b, id, &cookie, Some(&csrf));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["issued_by"], "browser");
    // Signed out on B, it is gone on A as well.
    let out = raw(agent()
        .post(&b.url("/logout"))
        .header("Cookie", &cookie)
        .send_form([("next", "/")])
        .unwrap());
    assert_eq!(out.status, 303);
    let (status, _) = post_command(&a, id, &cookie, Some(&csrf));
    assert_eq!(status, 401);
}

#[test]
fn two_servers_ingesting_into_one_run_keep_every_summary_exact() {
    let Some(pg) = PgServer::up() else { return };
    let (db, a, b) = two(&pg);
    let id = a.create_run("shared", 4);
    // Interleaved batches from both servers at once, overlapping (a rank resending what
    // another sent), each step's values told apart by the server that sent it first.
    let send = |app: &TestApp, offset: u64| {
        for round in 0..40u64 {
            let batch: Vec<Value> = (0..25u64)
                .map(|i| {
                    let s = round * 20 + i + offset;
                    json!({"step": s, "scalars": {"loss": 1.0 + (s % 7) as f64},
                           "layers": {"hidden_var": [s as f64, 1.0, -(s as f64), 0.5]}})
                })
                .collect();
            let r = app.ingest(id, json!(batch));
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| send(&a, 0));
        scope.spawn(|| send(&b, 10));
    });
    let distinct = 39 * 20 + 25 + 10;
    let detail = b.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(detail.body["steps"], distinct, "{}", detail.body);
    // Both servers answer the same series.
    let path = format!("/api/v1/runs/{id}/scalars/loss?points=50");
    assert_eq!(a.get(&path).body, b.get(&path).body);
    a.stop();
    b.stop();
    let report = block_on(check::check(&db.at, false)).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.steps, distinct);
}

/// The alerts of run `id`, as (name, step).
fn alerts(app: &TestApp, id: i64) -> Vec<(String, u64)> {
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let alert = |e: &Value| {
        (
            e["name"].as_str().unwrap().to_owned(),
            e["step"].as_u64().unwrap(),
        )
    };
    let events = events.as_array().unwrap().iter();
    events.filter(|e| e["kind"] == "alert").map(alert).collect()
}

#[test]
fn two_servers_taking_turns_at_one_run_raise_its_alerts_once_as_one_server_would() {
    let Some(pg) = PgServer::up() else { return };
    let (_db, a, b) = two(&pg);
    let mut steps = crate::commands::spiky_losses(0..600, &[100, 320])
        .as_array()
        .unwrap()
        .clone();
    // The loss is NaN for steps 400 to 499: one alert when it turns, not one per server.
    for s in &mut steps[400..500] {
        s["scalars"]["loss"] = json!("NaN");
    }
    // From step 200 on, only a loss four times its course is a spike: the doubling at step
    // 320 is none (its batch goes through A; the thresholds are set through B).
    let thresholds = json!({"loss_spike": 3.0});
    let id = a.create_run("shared", 1);
    // Batches of 20 go to the servers in turn, as a load balancer would send them.
    let batches = |range: std::ops::Range<usize>| {
        for (i, batch) in steps[range].chunks(20).enumerate() {
            let app = if i % 2 == 0 { &a } else { &b };
            let r = app.ingest(id, json!(batch));
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    batches(0..200);
    let r = b.put(&format!("/api/v1/runs/{id}/thresholds"), &thresholds);
    assert_eq!(r.status, 200, "{}", r.body);
    batches(200..600);
    // The same steps through one server alone.
    let one = TestApp::spawn();
    let alone = one.create_run("alone", 1);
    for (i, batch) in steps.chunks(20).enumerate() {
        if i == 10 {
            let r = one.put(&format!("/api/v1/runs/{alone}/thresholds"), &thresholds);
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert_eq!(one.ingest(alone, json!(batch)).status, 200);
    }
    let want = [
        ("loss_spike".to_owned(), 100),
        ("non_finite_loss".to_owned(), 400),
    ];
    assert_eq!(alerts(&one, alone), want, "one server alone");
    assert_eq!(alerts(&a, id), want, "two servers in turn");
}
