//! `keel migrate`: a SQLite database moved to PostgreSQL and back with nothing lost — every
//! run, branch, step (NaN and ±Inf included), summary, event, command, incident, launch and
//! person — a copy interrupted by SIGKILL resumed where it stopped, and a server on the copy
//! going on from the ids copied. (`KEEL_SKIP_POSTGRES=1` skips it.)

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel_server::storage::Location;
use serde_json::{Value, json};

use crate::harness::{Postgres, Server};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn arg(at: &Location) -> String {
    match at {
        Location::Sqlite(p) => p.display().to_string(),
        Location::Postgres(u) => u.clone(),
    }
}

/// Three runs of 20,000 steps (one with a rewind), NaN and +Inf among the values, commands,
/// alerts and incidents, and a person.
fn fill(db: &Path) {
    let server = Server::on(
        Location::Sqlite(db.to_owned()),
        "127.0.0.1:0".parse().unwrap(),
    );
    for r in 0..3 {
        let run = server.post(
            "/api/v1/runs",
            &json!({"name": format!("run-{r}"), "layers": 8, "config": {"lr": 0.01}}),
        )["id"]
            .as_i64()
            .unwrap();
        for start in (0..20_000u64).step_by(1000) {
            let steps: Vec<Value> = (start..start + 1000)
                .map(|s| {
                    let loss = if s == 12_345 {
                        json!("NaN")
                    } else {
                        json!(3.0 / (1.0 + s as f64))
                    };
                    let act: Vec<Value> = (0..8)
                        .map(|l| {
                            if s == 77 && l == 2 {
                                json!("Infinity")
                            } else {
                                json!(l as f64 + s as f64 * 1e-3)
                            }
                        })
                        .collect();
                    json!({"step": s, "time": 1.7e9 + s as f64, "tokens": s * 1024,
                           "scalars": {"loss": loss, "lr": 0.01},
                           "layers": {"act_max": act, "hidden_var": vec![1.0 + r as f64; 8]}})
                })
                .collect();
            let reply = server.post(
                &format!("/api/v1/runs/{run}/steps"),
                &json!({"steps": steps}),
            );
            assert_eq!(reply["accepted"], 1000, "{reply}");
        }
        server.post(
            &format!("/api/v1/runs/{run}/commands"),
            &json!({"kind": "set_lr", "lr": 0.001}),
        );
        if r == 1 {
            let steps: Vec<Value> = (15_000..15_500u64)
                .map(|s| json!({"step": s, "scalars": {"loss": 0.5}, "layers": {"act_max": vec![0.0; 8], "hidden_var": vec![1.0; 8]}}))
                .collect();
            server.post(
                &format!("/api/v1/runs/{run}/steps"),
                &json!({"branch": 1, "steps": steps}),
            );
        }
    }
    server.stop();
    let people = keel(&[
        "users",
        "add",
        "olga",
        "--role",
        "operator",
        "--db",
        &db.display().to_string(),
    ]);
    assert!(people.status.success(), "{}", text(&people));
}

/// What a server on `at` answers about every run: detail, series, layers, events, commands.
fn answers(at: &Location) -> Vec<Value> {
    let server = Server::on(at.clone(), "127.0.0.1:0".parse().unwrap());
    let mut out = Vec::new();
    for run in 1..=3 {
        for path in [
            format!("/api/v1/runs/{run}"),
            format!("/api/v1/runs/{run}/scalars/loss?points=500"),
            format!("/api/v1/runs/{run}/scalars/loss?from=12000&to=12999&points=1000"),
            format!("/api/v1/runs/{run}/layers/act_max?columns=200"),
            format!("/api/v1/runs/{run}/events"),
            format!("/api/v1/runs/{run}/commands"),
            format!("/api/v1/runs/{run}/incidents"),
        ] {
            out.push(server.get(&path));
        }
    }
    server.stop();
    out
}

#[test]
// The kill comes from the polling loop; a panic there ends the test process anyway.
#[allow(clippy::zombie_processes)]
fn a_sqlite_database_moves_to_postgres_and_back_with_nothing_lost_even_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pg) = Postgres::up(&format!("{}/migrate", dir.path().display())) else {
        return;
    };
    let source = dir.path().join("source.db");
    fill(&source);
    let (from, to) = (source.display().to_string(), arg(&pg.at));

    // Killed part-way through the steps…
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["migrate", "--from", &from, "--to", &to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let copied = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&to).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            if n > 0 {
                child.kill().unwrap();
                child.wait().unwrap();
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the copy never reached the steps"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(
        copied < 60_500,
        "killed too late to interrupt anything ({copied} steps)"
    );
    // …and run again: it goes on where it stopped.
    let again = keel(&["migrate", "--from", &from, "--to", &to]);
    let said = text(&again);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("the rest by an earlier run"), "{said}");
    assert!(
        said.contains("every count and every run's checksum agree"),
        "{said}"
    );

    // Back to a new SQLite file.
    let back = dir.path().join("back.db");
    let home = keel(&[
        "migrate",
        "--from",
        &to,
        "--to",
        &back.display().to_string(),
    ]);
    assert!(home.status.success(), "{}", text(&home));

    // The same answers from all three, every summary exact, and the person still there.
    let want = answers(&Location::Sqlite(source.clone()));
    assert_eq!(answers(&pg.at), want);
    assert_eq!(answers(&Location::Sqlite(back.clone())), want);
    for db in [&to, &back.display().to_string()] {
        let check = keel(&["check", "--db", db]);
        assert!(check.status.success(), "{}", text(&check));
        let people = keel(&["users", "list", "--db", db]);
        assert!(text(&people).contains("olga"), "{}", text(&people));
    }

    // A server on the copy goes on after the ids it copied.
    let server = Server::on(pg.at.clone(), "127.0.0.1:0".parse().unwrap());
    let run = server.post(
        "/api/v1/runs",
        &json!({"name": "new", "layers": 1, "config": {}}),
    );
    assert_eq!(run["id"], 4, "{run}");
    let cmd = server.post("/api/v1/runs/4/commands", &json!({"kind": "pause"}));
    assert_eq!(cmd["id"], 4, "{cmd}");
    server.stop();

    // Refusals: the same database, no source, a target that is not empty and not a copy.
    let same = keel(&["migrate", "--from", &from, "--to", &from]);
    assert!(
        !same.status.success() && text(&same).contains("the same database"),
        "{}",
        text(&same)
    );
    let nothing = keel(&["migrate", "--from", "/nonexistent/k.db", "--to", &to]);
    assert!(
        !nothing.status.success() && text(&nothing).contains("no database at"),
        "{}",
        text(&nothing)
    );
    // The copy now has a run the source never had.
    let other = keel(&["migrate", "--from", &from, "--to", &to]);
    assert!(!other.status.success(), "{}", text(&other));
    assert!(
        text(&other).contains("not the source's"),
        "{}",
        text(&other)
    );
}
