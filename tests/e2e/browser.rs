//! The operator's path in a real headless Chromium against a real trainer: sign in, click
//! pause and see the trainer stop stepping, resume, set the LR and see the LR chart change at
//! the step the trainer applied it, switch the data mix, and anneal.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, TOKEN, assert_no_steps_while_paused, spawn_training, tiny, wait_for};
use crate::webdriver;

const PATIENCE: Duration = Duration::from_secs(60);

/// Submits the control form of `kind`, filling `fields` first.
fn submit(b: &webdriver::Browser, kind: &str, fields: Value) {
    b.eval(
        "const f = document.querySelector(`form[data-kind=${arguments[0]}]`); \
         for (const [k, v] of Object.entries(arguments[1])) f.elements[k].value = v; \
         f.querySelector('button[type=submit]').click()",
        json!([kind, fields]),
    );
}

/// Waits until the newest command of `kind` is applied and returns its step.
fn applied_step(server: &Server, run: i64, kind: &str) -> u64 {
    let path = format!("/api/v1/runs/{run}/commands");
    let mut step = 0;
    wait_for(60, &format!("{kind} to apply"), || {
        let list = server.get(&path);
        let last = list
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c["command"]["kind"] == kind)
            .cloned();
        match last {
            Some(c) if c["status"] == "applied" => {
                step = c["applied_step"].as_u64().unwrap();
                assert_eq!(c["issued_by"], "browser");
                true
            }
            _ => false,
        }
    });
    step
}

#[test]
fn an_operator_pauses_and_sets_the_lr_of_a_real_trainer_from_the_run_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("keel.db"), "127.0.0.1:0".parse().unwrap());
    let (stop, handle) = spawn_training(tiny(&server.url(), dir.path(), 1_000_000));
    wait_for(120, "the stable phase", || {
        server.get("/api/v1/runs")[0]["last_step"]
            .as_u64()
            .unwrap_or(0)
            >= 20
    });
    let run = server.get("/api/v1/runs")[0]["id"].as_i64().unwrap();
    let Some(b) = webdriver::Browser::start(1280, 1600) else {
        stop.store(true, Ordering::SeqCst);
        return;
    };
    b.goto(&format!("{}/login?next=/runs/{run}", server.url()));
    b.submit_login(TOKEN, PATIENCE);
    b.wait_for(
        "the controls",
        PATIENCE,
        "return document.getElementById('controls')",
    );

    b.eval("document.getElementById('cmd-pause').click()", json!([]));
    applied_step(&server, run, "pause");
    b.wait_for(
        "the page to show the run paused",
        PATIENCE,
        "return document.getElementById('run-status').textContent.trim() === 'paused'",
    );
    assert_no_steps_while_paused(&server, run);

    b.eval("document.getElementById('cmd-resume').click()", json!([]));
    applied_step(&server, run, "resume");
    submit(&b, "set_lr", json!({"mode": "lr", "value": "0.002"}));
    let at = applied_step(&server, run, "set_lr");
    // The LR chart, fed live, shows 0.01 before the applied step and 0.002 from it on.
    let script = format!(
        "const s = window.keelCharts.lr.series.get('lr'); if (!s) return false; \
         const i = s.step.indexOf({at}); \
         return i > 0 && s.step.length > i + 2 ? [s.mean[i - 1], s.mean[i], s.mean[s.mean.length - 1]] : false"
    );
    let seen = b.wait_for("the new LR on the chart", PATIENCE, &script);
    assert_eq!(seen, json!([0.01, 0.002, 0.002]), "LR around step {at}");

    // Switch the data mix to one source: the other sources' losses stop arriving after it.
    b.eval(
        "const f = document.querySelector('form[data-kind=set_data_mix]'); \
         const inputs = [...f.querySelectorAll('[data-source]')]; \
         inputs.forEach((e, i) => e.value = i === 0 ? '1' : ''); \
         f.querySelector('button[type=submit]').click(); \
         return inputs.length",
        json!([]),
    );
    applied_step(&server, run, "set_data_mix");

    // Anneal linearly to 0 over 20 steps: the LR chart falls from the applied step on.
    submit(
        &b,
        "anneal",
        json!({"steps": "20", "shape": "linear", "final_lr": "0"}),
    );
    let from = applied_step(&server, run, "anneal");
    let script = format!(
        "const s = window.keelCharts.lr.series.get('lr'); if (!s) return false; \
         const i = s.step.indexOf({from}); \
         return i > 0 && s.step.length > i + 10 ? [s.mean[i - 1], s.mean[i + 10]] : false"
    );
    let seen = b.wait_for("the decaying LR on the chart", PATIENCE, &script);
    let (before, after) = (seen[0].as_f64().unwrap(), seen[1].as_f64().unwrap());
    assert_eq!(before, 0.002);
    assert!(
        after < 0.0015,
        "the LR did not decay after step {from}: {seen}"
    );

    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}
