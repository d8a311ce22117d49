//! The pages and the charts over plain HTTP: HTML answers, error pages, PNG and SVG images,
//! and the all-runs live stream that the runs page follows.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::synthetic_step;
use crate::helpers::TestApp;
use crate::live::all_runs_stream;

fn run_with_steps(app: &TestApp, steps: u64) -> i64 {
    let id = app.create_run("proxy-tiny", 8);
    let batch: Vec<Value> = (0..steps).map(|s| synthetic_step(s, 8, Some(5))).collect();
    assert_eq!(app.ingest(id, json!(batch)).status, 200);
    id
}

#[test]
fn the_pages_answer_html_without_series_data_and_a_missing_run_is_a_404_page() {
    let app = TestApp::spawn();
    let id = run_with_steps(&app, 20);
    let (status, kind, body) = app.fetch("/");
    let html = String::from_utf8(body).unwrap();
    assert_eq!((status, kind.starts_with("text/html")), (200, true));
    assert!(html.contains(&format!("href=\"/runs/{id}\"")), "{html}");
    let (status, _, body) = app.fetch(&format!("/runs/{id}"));
    let html = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(html.contains("data-boot=") && html.contains("proxy-tiny"));
    // The page carries names, not series: the browser fetches those at its resolution.
    assert!(!html.contains("1764300000"), "no step data in the page");
    for missing in ["/runs/99", "/runs/abc"] {
        let (status, kind, body) = app.fetch(missing);
        assert_eq!(
            (status, kind.starts_with("text/html")),
            (404, true),
            "{missing}"
        );
        assert!(String::from_utf8(body).unwrap().contains("not found"));
    }
    let (status, _, body) = app.fetch("/runs/table");
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .starts_with("\n<tr data-run=")
    );
}

#[test]
fn a_heatmap_renders_as_png_and_svg_with_the_json_query() {
    let app = TestApp::spawn();
    let id = run_with_steps(&app, 40);
    let (status, kind, png) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.png?from=0&to=30&columns=20"
    ));
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!(info.width, 1200);
    let (status, kind, svg) = app.fetch(&format!("/api/v1/runs/{id}/layers/hidden_var.svg"));
    let svg = String::from_utf8(svg).unwrap();
    assert_eq!((status, kind.as_str()), (200, "image/svg+xml"));
    assert!(svg.starts_with("<svg") && svg.contains("<rect"));
    // Step 5 of layer 3 is NaN: its cell has the NaN colour (255, 0, 200).
    assert!(
        svg.to_uppercase().contains("#FF00C8"),
        "a NaN cell in the SVG"
    );
    let (status, _, body) = app.fetch(&format!("/api/v1/runs/{id}/layers/nope.png"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.png?columns=0"
    ));
    assert_eq!(status, 400);
}

#[test]
fn a_scalar_chart_renders_for_a_key_with_a_slash() {
    let app = TestApp::spawn();
    let id = run_with_steps(&app, 40);
    let (status, kind, png) = app.fetch(&format!("/api/v1/runs/{id}/scalars/loss/code.png"));
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    assert_eq!(&png[1..4], b"PNG");
    let (status, _, svg) = app.fetch(&format!("/api/v1/runs/{id}/scalars/loss.svg?points=10"));
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(svg).unwrap().contains("<polygon"),
        "the NaN marker"
    );
}

#[test]
fn the_all_runs_stream_sends_throttled_step_summaries_and_status_changes() {
    let app = TestApp::spawn();
    let id = app.create_run("fast", 8);
    let rx = all_runs_stream(&app);
    let (name, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(name, "hello");
    let start = Instant::now();
    for s in 0..40 {
        assert_eq!(
            app.ingest(id, json!([synthetic_step(s, 8, None)])).status,
            200
        );
    }
    let report = json!({"status": "paused"});
    assert_eq!(
        app.post(&format!("/api/v1/runs/{id}/status"), &report)
            .status,
        200
    );
    let (mut summaries, mut last) = (0, Value::Null);
    let mut status = None;
    while last["last_step"] != 39 || status.is_none() {
        let (name, data) = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
        match name.as_str() {
            "runs" => {
                summaries += 1;
                last = data["runs"][0].clone();
            }
            "status" => status = Some(data),
            _ => {}
        }
    }
    // 40 ingests, but at most one summary per 250 ms (and one right away).
    let allowed = start.elapsed().as_millis() / 250 + 2;
    assert!(
        summaries as u128 <= allowed,
        "{summaries} summaries, {allowed} allowed"
    );
    assert_eq!(last["id"], id);
    assert_eq!(last["tokens"], 40 * 4096);
    assert_eq!(status.unwrap()["status"], "paused");
}
