//! Bad input gets a clear JSON error with the right status and changes nothing.

use serde_json::json;

use crate::helpers::{Reply, TOKEN, TestApp, step};

fn assert_refused(r: &Reply, status: u16, mentions: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let msg = r.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error in {}", r.body));
    assert!(
        msg.contains(mentions),
        "{msg:?} should mention {mentions:?}"
    );
}

/// A run with one stored step, and a check that a refused write changed nothing.
fn with_run(f: impl FnOnce(&TestApp, i64)) {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    f(&app, id);
    let detail = app.get(&format!("/api/v1/runs/{id}")).body;
    assert_eq!(detail["steps"], 1, "a refused write changed the run");
    assert_eq!(detail["last_step"], 0);
}

fn ingest_raw(app: &TestApp, id: i64, body: &str) -> Reply {
    app.post_raw(
        &format!("/api/v1/runs/{id}/steps"),
        body.as_bytes(),
        Some(TOKEN),
    )
}

#[test]
fn malformed_json_is_a_400() {
    with_run(|app, id| {
        assert_refused(
            &ingest_raw(app, id, r#"{"steps": [{"step": 1,"#),
            400,
            "JSON",
        )
    });
}

#[test]
fn a_value_of_the_wrong_type_is_a_422() {
    with_run(|app, id| {
        let r = ingest_raw(
            app,
            id,
            r#"{"steps": [{"step": 1, "scalars": {"loss": "low"}}]}"#,
        );
        assert_refused(&r, 422, "NaN");
    });
}

#[test]
fn null_is_not_a_metric() {
    with_run(|app, id| {
        let r = ingest_raw(
            app,
            id,
            r#"{"steps": [{"step": 1, "scalars": {"loss": null}}]}"#,
        );
        assert_refused(&r, 422, "number");
    });
}

#[test]
fn a_negative_step_is_a_422() {
    with_run(|app, id| {
        assert_refused(
            &ingest_raw(app, id, r#"{"steps": [{"step": -1}]}"#),
            422,
            "step",
        )
    });
}

#[test]
fn an_absurd_step_is_a_422() {
    with_run(|app, id| {
        let r = app.ingest(
            id,
            json!([step(1, json!(1.0), 2), step(10u64.pow(15), json!(1.0), 2)]),
        );
        assert_refused(&r, 422, "largest step");
    });
}

#[test]
fn a_layer_vector_of_the_wrong_length_is_a_422_and_stores_nothing_of_the_batch() {
    with_run(|app, id| {
        let r = app.ingest(id, json!([step(1, json!(1.0), 2), step(2, json!(1.0), 3)]));
        assert_refused(&r, 422, "the run has 2 layers");
    });
}

#[test]
fn an_empty_batch_is_a_422() {
    with_run(|app, id| assert_refused(&app.ingest(id, json!([])), 422, "no steps"));
}

#[test]
fn unknown_fields_are_a_422() {
    with_run(|app, id| {
        let r = ingest_raw(app, id, r#"{"steps": [{"step": 1, "lossy": 2}]}"#);
        assert_refused(&r, 422, "lossy");
    });
}

#[test]
fn a_reserved_scalar_name_is_a_422() {
    with_run(|app, id| {
        let r = app.ingest(id, json!([{"step": 1, "scalars": {"tokens": 5}}]));
        assert_refused(&r, 422, "field of the step record");
    });
}

#[test]
fn an_unknown_run_is_a_404() {
    let app = TestApp::spawn();
    assert_refused(
        &app.ingest(99, json!([step(0, json!(1.0), 2)])),
        404,
        "run 99",
    );
    assert_refused(&app.get("/api/v1/runs/99"), 404, "run 99");
    assert_refused(&app.get("/api/v1/runs/99/scalars/loss"), 404, "run 99");
    assert_refused(&app.get("/api/v1/runs/99/live"), 404, "run 99");
}

#[test]
fn a_run_id_that_is_not_a_number_is_a_400() {
    let app = TestApp::spawn();
    let r = app.get("/api/v1/runs/abc");
    assert_refused(&r, 400, "abc");
}

#[test]
fn a_write_without_a_token_is_a_401() {
    with_run(|app, id| {
        let body = json!({"steps": [step(5, json!(1.0), 2)]}).to_string();
        let r = app.post_raw(&format!("/api/v1/runs/{id}/steps"), body.as_bytes(), None);
        assert_refused(&r, 401, "Bearer");
        let r = app.post_raw("/api/v1/runs", br#"{"name": "x", "layers": 1}"#, None);
        assert_refused(&r, 401, "Bearer");
    });
}

#[test]
fn a_write_with_a_wrong_token_is_a_401() {
    with_run(|app, id| {
        let body = json!({"steps": [step(5, json!(1.0), 2)]}).to_string();
        let r = app.post_raw(
            &format!("/api/v1/runs/{id}/steps"),
            body.as_bytes(),
            Some("nope"),
        );
        assert_refused(&r, 401, "wrong");
        assert!(!r.body.to_string().contains(TOKEN));
    });
}

/// Sends the head of a POST with `content_length` and only `sent` bytes of body, then
/// (with `finish`) half-closes; the raw answer the server gave.
fn raw_post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    content_length: usize,
    sent: usize,
    finish: bool,
) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(app.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {content_length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&vec![b' '; sent]).unwrap();
    if finish {
        conn.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer arrives without the rest of the body: read until the server closes.
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_body_over_the_limit_is_refused_from_its_length_before_it_is_sent() {
    with_run(|app, id| {
        // The real limit (32 MiB): 40 MiB announced, none of it sent.
        let path = format!("/api/v1/runs/{id}/steps");
        let answer = raw_post(app, &path, Some(TOKEN), 40 << 20, 0, false);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("size limit"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert_eq!(app.get(&format!("/api/v1/runs/{id}")).body["steps"], 1);
    });
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_once_it_passes_the_limit() {
    use std::io::{Read, Write};
    with_run(|app, id| {
        // No Content-Length to judge from: the real limit (32 MiB) is enforced while reading.
        let mut conn = std::net::TcpStream::connect(app.addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let head = format!(
            "POST /api/v1/runs/{id}/steps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).unwrap();
        let piece = vec![b' '; 1 << 20];
        let mut sent = 0;
        for _ in 0..40 {
            let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
            if conn.write_all(&frame).is_err() {
                break;
            }
            sent += 1;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "after {sent} MiB: {answer}"
        );
        assert!(answer.contains("size limit"), "{answer}");
        assert_eq!(app.get(&format!("/api/v1/runs/{id}")).body["steps"], 1);
    });
}

#[test]
fn a_write_without_a_token_is_refused_before_its_body_is_read() {
    with_run(|app, id| {
        // 30 MiB announced, a few bytes sent: the 401 comes without waiting for the rest.
        let path = format!("/api/v1/runs/{id}/steps");
        for token in [None, Some("nope")] {
            let answer = raw_post(app, &path, token, 30 << 20, 100, false);
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            assert!(!answer.contains(TOKEN));
        }
    });
}

#[test]
fn past_the_bytes_in_flight_a_write_is_told_to_retry_and_an_aborted_body_is_no_413() {
    let app = TestApp::on_temp(|c| c.bodies_in_flight = 1000);
    let id = app.create_run("r", 2);
    let path = format!("/api/v1/runs/{id}/steps");
    let answer = raw_post(&app, &path, Some(TOKEN), 2000, 0, false);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Within the budget a write goes through, and its bytes are given back afterwards.
    for _ in 0..3 {
        assert_eq!(app.ingest(id, json!([step(0, json!(1.0), 2)])).status, 200);
    }
    // A client that stops sending half-way gets no "too large".
    let answer = raw_post(&app, &path, Some(TOKEN), 900, 10, true);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(app.ingest(id, json!([step(1, json!(1.0), 2)])).status, 200);
}

#[test]
fn bad_query_parameters_are_a_400() {
    with_run(|app, id| {
        for q in [
            "points=0",
            "points=abc",
            "from=9&to=3",
            "colour=red",
            "points=1000001",
            "from=-4",
        ] {
            let r = app.get(&format!("/api/v1/runs/{id}/scalars/loss?{q}"));
            assert_eq!(r.status, 400, "{q}: {}", r.body);
            assert!(r.body["error"].is_string());
        }
    });
}

#[test]
fn an_unknown_series_is_a_404() {
    with_run(|app, id| {
        assert_refused(
            &app.get(&format!("/api/v1/runs/{id}/scalars/nope")),
            404,
            "nope",
        );
        assert_refused(
            &app.get(&format!("/api/v1/runs/{id}/layers/loss")),
            404,
            "loss",
        );
    });
}

#[test]
fn invalid_run_specs_are_422() {
    let app = TestApp::spawn();
    for spec in [
        json!({"name": "", "layers": 2}),
        json!({"name": "x", "layers": 0}),
        json!({"name": "x", "layers": 100000}),
        json!({"name": "x\u{7}", "layers": 2}),
        json!({"name": "x", "layers": 2, "tags": [""]}),
        json!({"layers": 2}),
    ] {
        let r = app.post("/api/v1/runs", &spec);
        assert_eq!(r.status, 422, "{spec}: {}", r.body);
    }
    assert_eq!(app.get("/api/v1/runs").body, json!([]));
}

#[test]
fn an_unknown_path_is_a_json_404() {
    let app = TestApp::spawn();
    assert_refused(&app.get("/api/v1/nothing"), 404, "no such");
}

#[test]
fn a_wrong_method_is_a_json_405() {
    let app = TestApp::spawn();
    let r = app.post_raw("/healthz", b"{}", None);
    assert_refused(&r, 405, "method");
}

#[test]
fn a_query_parameter_of_the_other_endpoint_is_a_400() {
    with_run(|app, id| {
        assert_refused(
            &app.get(&format!("/api/v1/runs/{id}/scalars/loss?columns=5")),
            400,
            "points",
        );
        assert_refused(
            &app.get(&format!("/api/v1/runs/{id}/layers/hidden_var?points=5")),
            400,
            "columns",
        );
    });
}
