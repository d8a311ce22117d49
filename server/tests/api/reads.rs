//! Reads of any size cost a bounded working set: wide windows are answered from summaries,
//! not whole raw step rows; answers of many chunks are written in pieces and still agree
//! with themselves; the runs list comes in pages.

use serde_json::{Value, json};

use crate::helpers::TestApp;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The loss of step `s`: a saw-tooth with one spike, so bucket min and max are easy to know.
fn loss(s: u64) -> f64 {
    if s == 31_337 { 1000.0 } else { (s % 97) as f64 }
}

#[test]
fn a_window_too_wide_to_read_raw_is_answered_in_exact_summary_buckets() {
    let app = TestApp::spawn();
    let id = app.create_run("wide", 1);
    let steps = 40_000u64;
    for start in (0..steps).step_by(10_000) {
        let batch: Vec<Value> = (start..start + 10_000)
            .map(|s| json!({"step": s, "scalars": {"loss": loss(s)}}))
            .collect();
        assert_eq!(app.ingest(id, json!(batch)).status, 200);
    }
    // 100,000 points over 40,000 steps would be one raw step each: 40,000 whole step rows
    // read for one answer. The server answers in the finest summaries instead.
    let r = app.get(&format!("/api/v1/runs/{id}/scalars/loss?points=100000"));
    assert_eq!(r.status, 200, "{}", r.body);
    let step = r.body["step"].as_array().unwrap();
    assert_eq!(step.len(), 2500, "40,000 steps in buckets of 16");
    for (i, s) in step.iter().enumerate() {
        let s0 = s.as_u64().unwrap();
        assert_eq!(s0, i as u64 * 16);
        let want_max = (s0..s0 + 16).map(loss).fold(f64::MIN, f64::max);
        let want_min = (s0..s0 + 16).map(loss).fold(f64::MAX, f64::min);
        assert_eq!(f(&r.body["max"][i]), want_max, "bucket at {s0}");
        assert_eq!(f(&r.body["min"][i]), want_min, "bucket at {s0}");
        assert_eq!(f(&r.body["last"][i]), loss(s0 + 15));
    }
    assert_eq!(f(&r.body["max"][31_337 / 16]), 1000.0, "the spike survives");
    // A window narrow enough is still read raw, one step per bucket.
    let r = app.get(&format!(
        "/api/v1/runs/{id}/scalars/loss?from=31000&to=31999&points=100000"
    ));
    assert_eq!(r.body["step"].as_array().unwrap().len(), 1000);
    assert_eq!(f(&r.body["max"][337]), 1000.0);
}

#[test]
fn an_answer_of_many_chunks_is_one_consistent_document() {
    let app = TestApp::spawn();
    let layers = 200u64;
    let id = app.create_run("deep", layers as u32);
    let value = |s: u64, l: u64| (s * 1000 + l) as f64;
    let steps = 2000u64;
    for start in (0..steps).step_by(500) {
        let batch: Vec<Value> = (start..start + 500)
            .map(|s| {
                let v: Vec<f64> = (0..layers).map(|l| value(s, l)).collect();
                json!({"step": s, "layers": {"hidden_var": v}})
            })
            .collect();
        assert_eq!(app.ingest(id, json!(batch)).status, 200);
    }
    // 2,000 columns of 200 layers are several chunks of the reader, written field by field.
    let (status, kind, body) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var?columns=100000"
    ));
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (m["stat"].clone(), m["layers"].clone()),
        (json!("hidden_var"), json!(200))
    );
    for field in ["step", "min", "max", "mean"] {
        assert_eq!(
            m[field].as_array().unwrap().len(),
            steps as usize,
            "{field}"
        );
    }
    for s in [0, 327, 328, 1999] {
        assert_eq!(m["step"][s as usize], json!(s));
        for l in [0, 199] {
            for field in ["min", "max", "mean"] {
                assert_eq!(f(&m[field][s as usize][l as usize]), value(s, l), "{field}");
            }
        }
    }
    // The CSV is the same buckets, one row per bucket and layer.
    let (status, kind, body) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.csv?columns=100000"
    ));
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + (steps * layers) as usize);
    assert_eq!(lines[0], "step,layer,min,max,mean");
    assert_eq!(
        lines[1 + 1999 * 200 + 199],
        "1999,199,1999199,1999199,1999199"
    );
}

#[test]
fn an_unknown_series_is_refused_before_any_answer_starts() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let r = app.get(&format!("/api/v1/runs/{id}/scalars/nope?points=100000"));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.get(&format!("/api/v1/runs/{id}/layers/nope.csv"));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.get(&format!("/api/v1/runs/{id}/scalars/loss?branch=7"));
    assert_eq!(r.status, 404, "{}", r.body);
}

/// The `rel="next"` URL of a Link header.
fn next_link(app: &TestApp, path: &str) -> (Vec<i64>, Option<String>) {
    let mut resp = app.agent.get(&app.url(path)).call().unwrap();
    assert_eq!(resp.status(), 200);
    let link = resp
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let ids = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let next = link.map(|l| {
        assert!(l.ends_with(r#">; rel="next""#), "{l}");
        l[1..l.find('>').unwrap()].to_owned()
    });
    (ids, next)
}

#[test]
fn the_runs_list_comes_in_pages_that_cover_every_run_once() {
    let app = TestApp::spawn();
    let made: Vec<i64> = (0..25)
        .map(|i| app.create_run(&format!("r{i}"), 1))
        .collect();
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/runs?limit=10".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let (ids, link) = next_link(&app, &path);
        assert!(ids.len() <= 10);
        seen.extend(ids);
        next = link;
        pages += 1;
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<i64> = made.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    // Without a limit, one page holds them all, with no next link.
    let (ids, link) = next_link(&app, "/api/v1/runs");
    assert_eq!((ids.len(), link), (25, None));
    for bad in ["limit=0", "limit=10001", "before=x", "limit=-1", "page=2"] {
        let r = app.get(&format!("/api/v1/runs?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

#[test]
fn the_runs_page_shows_the_newest_runs_and_links_to_older_ones() {
    let app = TestApp::spawn();
    let made: Vec<i64> = (0..501)
        .map(|i| app.create_run(&format!("r{i}"), 1))
        .collect();
    let (status, _, body) = app.fetch("/");
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    assert_eq!(page.matches("<tr data-run=").count(), 500);
    assert!(
        page.contains(&format!("data-run=\"{}\"", made[500])),
        "the newest run"
    );
    assert!(
        !page.contains(&format!("data-run=\"{}\"", made[0])),
        "the oldest run"
    );
    assert!(
        page.contains("500 of 501 runs"),
        "{}",
        &page[page.len() - 2000..]
    );
    let older = format!("/?before={}", made[1]);
    assert!(page.contains(&format!("href=\"{older}\"")));
    let (_, _, body) = app.fetch(&older);
    let page = String::from_utf8(body).unwrap();
    assert_eq!(page.matches("<tr data-run=").count(), 1);
    assert!(page.contains(&format!("data-run=\"{}\"", made[0])));
    assert!(page.contains("href=\"/\">newest runs"));
    let (_, _, body) = app.fetch(&format!("/runs/table?before={}", made[1]));
    assert_eq!(
        String::from_utf8(body)
            .unwrap()
            .matches("<tr data-run=")
            .count(),
        1
    );
    let (status, _, _) = app.fetch("/?before=soon");
    assert_eq!(status, 400);
}
