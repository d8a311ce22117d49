//! Summaries stay exact whatever the order steps arrive in: backfilled and out-of-order
//! batches, re-sent duplicates, rewinds and server restarts in between. Every stored bucket
//! is checked against its steps (`keel check`'s verifier), and every answer of a query against
//! a direct computation over the branch lineage's steps.

use std::collections::BTreeMap;

use keel_server::storage::{Location, check};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb};

/// splitmix64: a small, seedable generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn value(&mut self) -> f64 {
        match self.below(100) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            _ => (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 10.0,
        }
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

fn wire(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

fn read(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => other.as_f64().unwrap(),
    }
}

/// A step as sent: (step, loss, hidden_var of 3 layers).
type Step = (u64, f64, [f64; 3]);

/// A server that can be restarted on its database.
struct Restartable {
    app: Option<TestApp>,
    db: TestDb,
}

impl Restartable {
    fn new() -> Restartable {
        let db = TestDb::fresh();
        let app = TestApp::on(&db.at, |_| {});
        Restartable { app: Some(app), db }
    }

    fn app(&self) -> &TestApp {
        self.app.as_ref().unwrap()
    }

    fn restart(&mut self) {
        self.app.take().unwrap().stop();
        self.app = Some(TestApp::on(&self.db.at, |_| {}));
    }

    fn send(&self, run: i64, branch: u32, steps: &[Step]) {
        let records: Vec<Value> = steps
            .iter()
            .map(|(s, loss, var)| {
                json!({"step": s, "scalars": {"loss": wire(*loss)},
                       "layers": {"hidden_var": var.iter().map(|v| wire(*v)).collect::<Vec<_>>()}})
            })
            .collect();
        let r = self.app().post(
            &format!("/api/v1/runs/{run}/steps"),
            &json!({"branch": branch, "steps": records}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Stops the server and verifies every stored bucket against its steps.
    fn verify(mut self) -> check::Report {
        self.app.take().unwrap().stop();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check::check(&self.db.at, false)).unwrap()
    }

    /// Stops the server; its database stays until the returned guard goes.
    fn stop_and_keep_files(mut self) -> TestDb {
        self.app.take().unwrap().stop();
        self.db
    }
}

/// The loss query over `[from, to]` in `points` buckets, checked bucket by bucket against the
/// lineage's steps: bucket i holds the steps from its first step to the next bucket's.
fn assert_query_exact(
    app: &TestApp,
    run: i64,
    lineage: &BTreeMap<u64, f64>,
    (from, to, points): (u64, u64, u64),
) {
    let r = app.get(&format!(
        "/api/v1/runs/{run}/scalars/loss?from={from}&to={to}&points={points}"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let starts: Vec<u64> = r.body["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let inside: Vec<(u64, f64)> = lineage.range(from..=to).map(|(s, v)| (*s, *v)).collect();
    let first = inside.first().map(|(s, _)| *s);
    assert_eq!(
        starts.first().copied(),
        first,
        "from={from} to={to} points={points}: {}",
        r.body
    );
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(to + 1);
        let values: Vec<(u64, f64)> = lineage.range(*start..end).map(|(s, v)| (*s, *v)).collect();
        assert_eq!(
            values.first().map(|(s, _)| *s),
            Some(*start),
            "bucket {i} starts on a step"
        );
        let min = values
            .iter()
            .map(|v| v.1)
            .min_by(|a, b| a.total_cmp(b))
            .unwrap();
        let max = values
            .iter()
            .map(|v| v.1)
            .max_by(|a, b| a.total_cmp(b))
            .unwrap();
        let last = values.last().unwrap().1;
        let what = format!("bucket {i} ({start}..{end}) of from={from} to={to} points={points}");
        for (key, want) in [("min", min), ("max", max), ("last", last)] {
            let got = read(&r.body[key][i]);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{what}: {key} {got} where its steps say {want}"
            );
        }
    }
}

#[test]
fn a_restart_between_backfills_keeps_every_bucket_whole() {
    // What was seen as a new user: steps 0–99 and 200–249, a restart, then 100–149 and
    // 250–259; the bucket from 192 lost steps 200–249 (its min read 250).
    let mut s = Restartable::new();
    let run = s.app().create_run("backfill", 3);
    let steps = |r: std::ops::Range<u64>| -> Vec<Step> {
        r.map(|i| (i, i as f64, [i as f64; 3])).collect()
    };
    s.send(run, 0, &steps(0..100));
    s.send(run, 0, &steps(200..250));
    s.restart();
    s.send(run, 0, &steps(100..150));
    s.send(run, 0, &steps(250..260));
    let r = s.app().get(&format!(
        "/api/v1/runs/{run}/scalars/loss?from=192&to=255&points=1"
    ));
    assert_eq!(r.body["min"], json!([200.0]), "{}", r.body);
    assert_eq!(r.body["max"], json!([255.0]), "{}", r.body);
    let report = s.verify();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn summaries_equal_their_steps_after_any_order_of_batches_duplicates_rewinds_and_restarts() {
    for seed in 0..10u64 {
        let mut rng = Rng(seed);
        let mut s = Restartable::new();
        let run = s.app().create_run(&format!("seed-{seed}"), 3);
        let total = 200 + rng.below(1300);
        let mut trunk: Vec<Step> = (0..total)
            .map(|i| (i, rng.value(), [rng.value(), rng.value(), rng.value()]))
            .collect();
        // Some runs have gaps: stretches the trainer never logged.
        if rng.below(2) == 0 {
            let gap = rng.below(total / 2);
            trunk.retain(|(i, _, _)| !(gap..gap + 40).contains(i));
        }
        let mut batches: Vec<(u32, Vec<Step>)> = Vec::new();
        let mut rest = trunk.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(90) as usize).min(rest.len());
            let mut chunk = rest[..n].to_vec();
            if rng.below(3) == 0 {
                rng.shuffle(&mut chunk);
            }
            batches.push((0, chunk));
            rest = &rest[n..];
        }
        // Re-sent batches (a spill sent twice, a retry after a lost answer).
        for _ in 0..rng.below(6) {
            let again = batches[rng.below(batches.len() as u64) as usize].clone();
            batches.push(again);
        }
        rng.shuffle(&mut batches);
        let restarts: Vec<usize> = (0..rng.below(3))
            .map(|_| rng.below(batches.len() as u64) as usize)
            .collect();
        for (i, (branch, batch)) in batches.iter().enumerate() {
            if restarts.contains(&i) {
                s.restart();
            }
            s.send(run, *branch, batch);
        }
        // A rewind half the time: branch 1 goes on from a fork step with its own values.
        let mut lineage: BTreeMap<u64, f64> = trunk.iter().map(|(i, l, _)| (*i, *l)).collect();
        if rng.below(2) == 0 {
            let fork = rng.below(total);
            let branch: Vec<Step> = (fork + 1..fork + 1 + rng.below(400) + 1)
                .map(|i| (i, rng.value(), [rng.value(); 3]))
                .collect();
            let (head, tail) = branch.split_at(1.min(branch.len()));
            s.send(run, 1, head);
            let mut tail: Vec<_> = tail.chunks(37).map(<[_]>::to_vec).collect();
            rng.shuffle(&mut tail);
            for (i, chunk) in tail.iter().enumerate() {
                if i == 1 {
                    s.restart();
                }
                s.send(run, 1, chunk);
            }
            lineage.retain(|step, _| *step <= fork);
            lineage.extend(branch.iter().map(|(i, l, _)| (*i, *l)));
        }
        let last = *lineage.keys().last().unwrap();
        for _ in 0..25 {
            let from = rng.below(last + 1);
            let to = from + rng.below(last + 1 - from);
            let points = 1 + rng.below(40);
            if lineage.range(from..=to).next().is_some() {
                assert_query_exact(s.app(), run, &lineage, (from, to, points));
            }
        }
        let report = s.verify();
        assert!(report.is_clean(), "seed {seed}: {report:?}");
        assert!(report.buckets > 0 && report.steps as usize >= trunk.len());
    }
}

#[test]
fn check_finds_wrong_missing_and_extra_buckets_and_repair_rebuilds_them() {
    let s = Restartable::new();
    let run = s.app().create_run("damaged", 3);
    let steps: Vec<_> = (0..100u64)
        .map(|i| (i, i as f64, [1.0, 2.0, 3.0]))
        .collect();
    s.send(run, 0, &steps);
    let db = s.db.at.clone();
    let _kept = s.stop_and_keep_files();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Damage it as an older version could have: one bucket wrong, one gone, one stray.
        macro_rules! damage {
            ($pool:expr) => {{
                let pool = $pool;
                let other: Vec<u8> = sqlx::query_scalar(
                    "SELECT data FROM summaries WHERE series_id = 0 AND level = 16 AND bucket = 0",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                for sql in [
                    "UPDATE summaries SET data = $1 WHERE series_id = 0 AND level = 16 AND bucket = 3",
                    "DELETE FROM summaries WHERE series_id = 0 AND level = 64 AND bucket = 1",
                    "INSERT INTO summaries VALUES (1, 0, 0, 16, 40, $1)",
                ] {
                    sqlx::query(sql).bind(&other).execute(&pool).await.unwrap();
                }
                pool.close().await;
            }};
        }
        match &db {
            Location::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                damage!(sqlx::SqlitePool::connect(&url).await.unwrap())
            }
            Location::Postgres(url) => damage!(sqlx::PgPool::connect(url).await.unwrap()),
        }

        let found = check::check(&db, false).await.unwrap();
        assert_eq!(
            (found.wrong, found.missing, found.extra),
            (1, 1, 1),
            "{found:?}"
        );
        assert!(!found.repaired);
        // A plain check changes nothing.
        assert_eq!(check::check(&db, false).await.unwrap(), found);
        let repaired = check::check(&db, true).await.unwrap();
        assert!(repaired.repaired);
        assert_eq!(
            (repaired.wrong, repaired.missing, repaired.extra),
            (1, 1, 1)
        );
        let after = check::check(&db, false).await.unwrap();
        assert!(after.is_clean(), "{after:?}");
        assert_eq!(after.buckets, found.buckets);
        let nowhere = tempfile::tempdir().unwrap();
        let missing = check::check(&nowhere.path().join("nothing.db"), false).await;
        assert!(format!("{:#}", missing.unwrap_err()).contains("no database at"));
    });
    let app = TestApp::on(db, |_| {});
    let r = app.get(&format!(
        "/api/v1/runs/{run}/scalars/loss?from=48&to=63&points=1"
    ));
    assert_eq!(
        (r.body["min"].clone(), r.body["max"].clone()),
        (json!([48.0]), json!([63.0]))
    );
}
