//! `keel backup` of a database a server is writing to: the copy is a consistent snapshot (its
//! summaries agree with its steps), and a refused backup leaves nothing behind.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::harness::{Process, TOKEN, free_addr};

fn backup(db: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["backup", "--db"])
        .arg(db)
        .arg("--out")
        .arg(out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[test]
fn a_backup_taken_while_a_run_streams_is_a_consistent_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    let server = Process::start(&db, free_addr());
    let agent = ureq::Agent::new_with_defaults();
    let auth = format!("Bearer {TOKEN}");
    let created: serde_json::Value = agent
        .post(&format!("{}/api/v1/runs", server.url))
        .header("Authorization", &auth)
        .send_json(json!({"name": "r", "layers": 4}))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    // A writer streaming batches the whole time the backups run.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url, auth) = (stop.clone(), server.url.clone(), auth.clone());
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_defaults();
            let mut step = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<_> = (step..step + 50)
                    .map(|s| {
                        json!({"step": s, "scalars": {"loss": 1.0 / (s + 1) as f64},
                               "layers": {"hidden_var": [1.0, 2.0, s as f64, "NaN"]}})
                    })
                    .collect();
                agent
                    .post(&format!("{url}/api/v1/runs/{id}/steps"))
                    .header("Authorization", &auth)
                    .send_json(json!({"steps": batch}))
                    .unwrap();
                step += 50;
            }
            step
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut copies = Vec::new();
    for i in 0..3 {
        let out = dir.path().join(format!("copy-{i}.db"));
        let done = backup(&db, &out);
        let said = String::from_utf8_lossy(&done.stderr).into_owned();
        assert!(done.status.success(), "{said}");
        assert!(said.contains("integrity check: ok"), "{said}");
        copies.push(out);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let sent = writer.join().unwrap();
    assert!(sent > 0);
    // Each copy is a snapshot between two batches: whole batches, summaries exact.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut counts = Vec::new();
    for copy in &copies {
        let report = rt
            .block_on(keel_server::storage::check::check(copy, false))
            .unwrap();
        assert!(report.is_clean(), "{:?}", report.examples);
        assert_eq!(report.steps % 50, 0, "a copy holds part of a batch");
        counts.push(report.steps);
    }
    assert!(
        counts[0] > 0 && counts.windows(2).all(|w| w[0] <= w[1]),
        "{counts:?}"
    );

    // A refusal says why and leaves nothing: the destination exists, or the source does not.
    let again = backup(&db, &copies[0]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let none = backup(&dir.path().join("missing.db"), &dir.path().join("x.db"));
    assert!(String::from_utf8_lossy(&none.stderr).contains("there is no database at"));
    assert!(!dir.path().join("x.db").exists() && !dir.path().join("missing.db").exists());
    server.kill();
}
