//! The run page's controls in a real headless Chromium: a visitor sees a sign-in link, signs
//! in through the form, lands back on the run, clicks pause and sees the command queued in the
//! log; a value the server refuses shows its reason next to the control. No trainer runs here,
//! so commands stay `queued` (the trainer's side is tested against a real trainer elsewhere).

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::synthetic_step;
use crate::helpers::{TOKEN, TestApp};
use crate::webdriver::Browser;

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn a_visitor_signs_in_through_the_form_and_pauses_the_run_from_its_page() {
    let app = TestApp::spawn();
    let id = app.create_run("proxy-tiny", 8);
    let batch: Vec<Value> = (0..50).map(|s| synthetic_step(s, 8, None)).collect();
    assert_eq!(app.ingest(id, json!(batch)).status, 200);
    let Some(b) = Browser::start(1280, 1400) else {
        return;
    };
    b.goto(&app.url(&format!("/runs/{id}")));
    b.wait_for(
        "the sign-in link",
        PATIENCE,
        "return document.querySelector('#signin a')",
    );
    assert_eq!(
        b.eval("return document.getElementById('controls')", json!([])),
        Value::Null
    );
    b.eval("document.querySelector('#signin a').click()", json!([]));
    b.submit_login(TOKEN, PATIENCE);
    b.wait_for(
        "the run page with its controls",
        PATIENCE,
        &format!(
            "return location.pathname === '/runs/{id}' && document.getElementById('controls')"
        ),
    );
    // The data mix is prefilled with the run's sources (from `loss/code`).
    let sources = b.eval(
        "return [...document.querySelectorAll('[data-source]')].map(e => e.dataset.source)",
        json!([]),
    );
    assert_eq!(sources, json!(["code"]));

    b.eval("document.getElementById('cmd-pause').click()", json!([]));
    let text = b.wait_for(
        "the pause command queued in the log",
        PATIENCE,
        "const li = document.querySelector('#commands li[data-status=queued]'); \
         return li && li.textContent",
    );
    let text = text.as_str().unwrap();
    assert!(text.contains("pause") && text.contains("browser"), "{text}");

    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");

    // A value the server refuses: its reason appears next to the control.
    b.eval(
        "const f = document.querySelector('form[data-kind=set_grad_clip]'); \
         f.elements.max_norm.value = '0'; f.querySelector('button[type=submit]').click()",
        json!([]),
    );
    let err = b.wait_for(
        "the refusal next to the grad clip control",
        PATIENCE,
        "return document.querySelector('form[data-kind=set_grad_clip] output.err').textContent",
    );
    assert!(err.as_str().unwrap().contains("max_norm"), "{err}");
}

#[test]
fn the_quick_controls_stay_in_view_below_the_last_heatmap_and_act_in_one_click() {
    let app = TestApp::spawn();
    let id = app.create_run("proxy-tiny", 8);
    let batch: Vec<Value> = (0..50).map(|s| synthetic_step(s, 8, None)).collect();
    assert_eq!(app.ingest(id, json!(batch)).status, 200);
    for (width, height) in [(1280, 900), (420, 800)] {
        let Some(b) = Browser::start(width, height) else {
            return;
        };
        b.goto(&app.url(&format!("/login?next=/runs/{id}")));
        b.submit_login(TOKEN, PATIENCE);
        b.wait_for(
            "the heatmaps",
            PATIENCE,
            "return document.querySelectorAll('figure.heatmap canvas').length > 0",
        );
        b.eval(
            "const all = document.querySelectorAll('figure.heatmap'); all[all.length - 1].scrollIntoView();",
            json!([]),
        );
        std::thread::sleep(Duration::from_millis(300));
        let scrolled = b.eval("return window.scrollY", json!([]));
        assert!(
            scrolled.as_f64().unwrap() > 500.0,
            "{width} px: the page scrolled ({scrolled})"
        );
        let v = in_view(&b, "#dock-pause");
        assert!(
            v[0] >= 0.0 && v[1] <= v[2],
            "{width} px: the pause button is in view: {v:?}"
        );
        b.eval("document.getElementById('dock-pause').click()", json!([]));
        b.wait_for(
            "the dock to show the pause queued",
            PATIENCE,
            "return document.getElementById('dock-latest').textContent === 'pause: queued'",
        );
        let errors = b.errors();
        assert!(errors.is_empty(), "script errors: {errors:?}");
    }
    let commands = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    assert_eq!(commands.as_array().unwrap().len(), 2, "one pause per click");
}

/// Where an element is against the viewport: `[top, bottom, viewport height]`.
fn in_view(b: &Browser, selector: &str) -> Vec<f64> {
    let v = b.eval(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect(); \
         return [r.top, r.bottom, window.innerHeight];",
        json!([selector]),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn an_open_incident_is_acknowledged_from_the_dock_and_thresholds_are_edited_on_the_page() {
    let app = TestApp::spawn();
    let id = app.create_run("proxy-tiny", 8);
    let batch: Vec<Value> = (0..80).map(|s| synthetic_step(s, 8, Some(60))).collect();
    assert_eq!(app.ingest(id, json!(batch)).status, 200);
    let Some(b) = Browser::start(1280, 900) else {
        return;
    };
    b.goto(&app.url(&format!("/login?next=/runs/{id}")));
    b.submit_login(TOKEN, PATIENCE);
    b.wait_for(
        "the open incident in the dock",
        PATIENCE,
        "return document.querySelector('#dock-incidents button[data-ack]')",
    );
    b.eval(
        "const all = document.querySelectorAll('figure.heatmap'); all[all.length - 1].scrollIntoView();",
        json!([]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = in_view(&b, "#dock-incidents button[data-ack]");
    assert!(
        v[0] >= 0.0 && v[1] <= v[2],
        "the Acknowledge button is in view below the last heatmap: {v:?}"
    );
    b.eval(
        "document.querySelector('#dock-incidents button[data-ack]').click()",
        json!([]),
    );
    b.wait_for(
        "the dock to show no open incident",
        PATIENCE,
        "return document.getElementById('dock-incidents-count').textContent === 'no open incidents'",
    );
    let incidents = app.get(&format!("/api/v1/runs/{id}/incidents")).body;
    let nan = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "non_finite_loss")
        .expect("a non_finite_loss incident");
    assert_eq!(nan["acked_by"], "browser", "{incidents}");
    let panel = b.wait_for(
        "the panel to say who acknowledged it",
        PATIENCE,
        "const e = document.querySelector('#incidents-list .acked'); return e && e.textContent",
    );
    assert!(panel.as_str().unwrap().contains("acknowledged by browser"));

    // The thresholds editor: a value out of range is refused with its reason; a good one is
    // saved and is what the API then answers.
    b.eval(
        "document.querySelector('#edit-thresholds').closest('details').open = true",
        json!([]),
    );
    let save = |json: &str| {
        b.eval(
            "const f = document.getElementById('edit-thresholds'); \
             f.querySelector('output').textContent = ''; \
             f.querySelector('textarea').value = arguments[0]; \
             f.querySelector('button[type=submit]').click()",
            json!([json]),
        );
        b.wait_for(
            "the editor's answer",
            PATIENCE,
            "const t = document.querySelector('#edit-thresholds output').textContent; return t || false",
        )
    };
    let refused = save(r#"{"spike_sigmas": 0}"#);
    assert!(
        refused.as_str().unwrap().contains("spike_sigmas"),
        "{refused}"
    );
    let saved = save(r#"{"spike_sigmas": 6, "depth_level": 50}"#);
    assert!(saved.as_str().unwrap().starts_with("saved"), "{saved}");
    let t = app.get(&format!("/api/v1/runs/{id}/thresholds")).body;
    assert_eq!(
        (t["spike_sigmas"].clone(), t["depth_level"].clone()),
        (json!(6.0), json!(50.0))
    );
    // The refusal is in the console as a failed request; nothing else may be.
    let errors: Vec<String> = b
        .errors()
        .into_iter()
        .filter(|e| {
            !e.contains(
                "thresholds - Failed to load resource: the server responded with a status of 422",
            )
        })
        .collect();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}
