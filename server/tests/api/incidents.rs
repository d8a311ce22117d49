//! Incidents (one per run of consecutive alerts, acknowledged by an operator), thresholds set
//! through the API, and webhooks delivered to a real local receiver that refuses at first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp};

/// A webhook receiver on a local port: answers 503 to its first `refuse` requests and 200
/// after, and keeps every body it was sent.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(refuse: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/hooks/T0/SECRET-PATH",
            listener.local_addr().unwrap()
        );
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let status = if n < refuse {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { url, bodies }
    }

    /// The bodies received once there are at least `n` (within 20 s).
    fn wait_for(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.bodies.lock().unwrap().clone();
            if got.len() >= n || start.elapsed() > Duration::from_secs(20) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Steps from `from` with a NaN loss on `nan` steps, else a flat loss.
fn steps(range: std::ops::Range<u64>, nan: &[u64]) -> Value {
    let steps: Vec<Value> = range
        .map(|s| {
            let loss = if nan.contains(&s) {
                json!("NaN")
            } else {
                json!(2.0)
            };
            json!({"step": s, "scalars": {"loss": loss}})
        })
        .collect();
    json!(steps)
}

fn run_with_rule(app: &TestApp) -> i64 {
    let config = json!({"alerts": {"rules": [{"on": "non_finite_loss", "do": {"kind": "pause"}}]}});
    let r = app.post(
        "/api/v1/runs",
        &json!({"name": "r", "layers": 1, "config": config}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_i64().unwrap()
}

#[test]
fn consecutive_alerts_make_one_incident_that_an_operator_acknowledges_once() {
    let app = TestApp::spawn();
    let id = run_with_rule(&app);
    // NaN at 10 and again at 20 (after finite steps): two alerts, one incident; at 5000,
    // far later, a second incident.
    assert_eq!(app.ingest(id, steps(0..100, &[10, 20])).status, 200);
    assert_eq!(app.ingest(id, steps(4990..5010, &[5000])).status, 200);
    let list = app.get(&format!("/api/v1/runs/{id}/incidents")).body;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let first = &list[0];
    assert_eq!(first["name"], "non_finite_loss");
    assert_eq!(first["severity"], "critical");
    assert_eq!(
        (first["start_step"].as_u64(), first["end_step"].as_u64()),
        (Some(10), Some(20))
    );
    assert_eq!(first["alerts"], 2);
    assert_eq!(first["acked_by"], Value::Null);
    let runs = app.get("/api/v1/runs").body;
    assert_eq!(runs[0]["open_incidents"], 2);

    let iid = first["id"].as_i64().unwrap();
    let ack = format!("/api/v1/runs/{id}/incidents/{iid}/ack");
    assert_eq!(app.post_raw(&ack, b"", None).status, 401);
    let r = app.post_raw(&ack, b"", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["acked_by"], "token");
    assert!(r.body["acked_at"].as_f64().is_some());
    assert_eq!(app.post_raw(&ack, b"", Some(TOKEN)).status, 409);
    assert_eq!(app.get("/api/v1/runs").body[0]["open_incidents"], 1);
    let open = app
        .get(&format!("/api/v1/runs/{id}/incidents?open=true"))
        .body;
    assert_eq!(open.as_array().unwrap().len(), 1);
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let audit: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "incident")
        .collect();
    assert_eq!(audit.len(), 1);
    assert!(
        audit[0]["message"]
            .as_str()
            .unwrap()
            .contains("acknowledged by token")
    );
    let missing = format!("/api/v1/runs/{id}/incidents/999/ack");
    assert_eq!(app.post_raw(&missing, b"", Some(TOKEN)).status, 404);
}

#[test]
fn thresholds_set_through_the_api_are_checked_audited_and_judge_the_next_steps() {
    let app = TestApp::spawn();
    let id = app.create_run("t", 1);
    let path = format!("/api/v1/runs/{id}/thresholds");
    assert_eq!(app.get(&path).body["attn_logit_max"], 1000.0);
    for bad in [
        json!({"spike_sigmas": -1.0}),
        json!({"throughput_drop": 2.0}),
        json!({"colour": 1}),
        json!({"ema_steps": "many"}),
    ] {
        let r = app.put(&path, &bad);
        assert!(
            [400, 422].contains(&r.status),
            "{bad}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        app.put_raw(&path, br#"{"attn_logit_max": 10}"#, None)
            .status,
        401
    );
    let r = app.put(&path, &json!({"attn_logit_max": 10.0}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get(&path).body["attn_logit_max"], 10.0);
    let step = json!([{"step": 1, "scalars": {"loss": 2.0}, "layers": {"attn_logit_max": [12.0]}}]);
    assert_eq!(app.ingest(id, step).status, 200);
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("settings", "thresholds")), "{kinds:?}");
    assert!(
        kinds.contains(&("alert", "attn_logit_runaway")),
        "{kinds:?}"
    );
}

#[test]
fn incidents_and_rule_firings_reach_the_webhook_after_a_refusal_without_secrets() {
    let receiver = Receiver::start(1);
    let hook = receiver.url.clone();
    let app = TestApp::on_temp(|c| {
        c.webhooks = vec![hook];
        c.webhook_backoff = Duration::from_millis(50);
    });
    let id = run_with_rule(&app);
    assert_eq!(app.ingest(id, steps(0..30, &[10])).status, 200);
    // The incident (refused, then sent again) and the rule's firing.
    let bodies = receiver.wait_for(3);
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(bodies[0], bodies[1], "the refused notice is sent again");
    let incident: Value = serde_json::from_str(&bodies[1]).unwrap();
    let text = incident["text"].as_str().unwrap();
    assert!(
        text.contains("non_finite_loss") && text.contains("CRITICAL"),
        "{text}"
    );
    assert!(
        text.contains(&format!("/runs/{id}")),
        "the run's page is linked: {text}"
    );
    assert_eq!(incident["keel"]["kind"], "incident");
    assert_eq!(incident["keel"]["incident"]["start_step"], 10);
    let rule: Value = serde_json::from_str(&bodies[2]).unwrap();
    assert_eq!(rule["keel"]["kind"], "rule");
    assert!(
        rule["text"].as_str().unwrap().contains("issued pause"),
        "{rule}"
    );
    for body in &bodies {
        assert!(!body.contains(TOKEN), "the token is never sent: {body}");
        assert!(
            !body.contains("SECRET-PATH"),
            "nor the webhook's URL: {body}"
        );
    }
}
