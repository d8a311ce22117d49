use serde_json::json;

use crate::helpers::TestApp;

/// An OpenAPI path as the router spells it: a series name's image or CSV ending belongs to
/// the route of the name (`…/{key}.png` is `…/{*key}`, `…/{stat}.csv` is `…/{stat}`).
fn as_routed(path: &str) -> String {
    let path = ["png", "svg", "csv"]
        .iter()
        .find_map(|ext| {
            path.strip_suffix(&format!("}}.{ext}"))
                .map(|p| format!("{p}}}"))
        })
        .unwrap_or_else(|| path.to_owned());
    path.replace("{key}", "{*key}")
}

#[test]
fn openapi_describes_every_api_route_the_router_has_and_no_other() {
    let app = TestApp::spawn();
    let doc = app.get("/api/openapi.json").body;
    let mut described = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert((method.to_uppercase(), as_routed(path)));
        }
    }
    // The API is what the description covers; pages, sign-in and static files are HTML
    // and files, listed in docs/api.md.
    let routed: std::collections::BTreeSet<(String, String)> = keel_server::routes::table()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/api/") || *p == "/healthz")
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    let missing: Vec<_> = routed.difference(&described).collect();
    let stale: Vec<_> = described.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}"
    );
    assert!(stale.is_empty(), "descriptions without a route: {stale:?}");
}

#[test]
fn healthz_answers_when_the_database_is_ready() {
    let app = TestApp::spawn();
    let r = app.get("/healthz");
    assert_eq!((r.status, r.body["status"].clone()), (200, json!("ok")));
}

#[test]
fn a_rewound_run_reads_its_live_branch_and_keeps_the_abandoned_one() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let batch = |range: std::ops::Range<u64>, v: f64| -> Vec<serde_json::Value> {
        range
            .map(|s| json!({"step": s, "scalars": {"loss": v}}))
            .collect()
    };
    assert_eq!(app.ingest(id, json!(batch(0..100, 1.0))).status, 200);
    // The trainer rewinds to step 59 and goes on as branch 1 from step 60.
    let r = app.post(
        &format!("/api/v1/runs/{id}/steps"),
        &json!({"branch": 1, "steps": batch(60..120, 2.0)}),
    );
    assert_eq!(r.body["branch"], 1, "{}", r.body);
    let live = app
        .get(&format!("/api/v1/runs/{id}/scalars/loss?points=1000"))
        .body;
    assert_eq!(live["branch"], 1);
    assert_eq!(live["step"].as_array().unwrap().len(), 120);
    assert_eq!(live["last"][59], 1.0);
    assert_eq!(live["last"][60], 2.0);
    let old = app
        .get(&format!(
            "/api/v1/runs/{id}/scalars/loss?branch=0&points=1000"
        ))
        .body;
    assert_eq!(old["step"].as_array().unwrap().len(), 100);
    assert_eq!(old["last"][99], 1.0);
    // Branch 3 cannot start before branch 2 exists.
    let r = app.post(
        &format!("/api/v1/runs/{id}/steps"),
        &json!({"branch": 3, "steps": batch(0..1, 1.0)}),
    );
    assert_eq!(r.status, 409);
}

#[test]
fn the_run_detail_lists_the_branches_of_a_rewound_run() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let batch = |range: std::ops::Range<u64>| -> Vec<serde_json::Value> {
        range
            .map(|s| json!({"step": s, "scalars": {"loss": 1.0}}))
            .collect()
    };
    let detail = app.get(&format!("/api/v1/runs/{id}")).body;
    assert_eq!(
        detail["branches"],
        json!([{"branch": 0, "parent": null, "fork_step": null}])
    );
    assert_eq!(app.ingest(id, json!(batch(0..100))).status, 200);
    let r = app.post(
        &format!("/api/v1/runs/{id}/steps"),
        &json!({"branch": 1, "steps": batch(60..80)}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let detail = app.get(&format!("/api/v1/runs/{id}")).body;
    assert_eq!(detail["branch"], 1);
    assert_eq!(
        detail["branches"],
        json!([
            {"branch": 0, "parent": null, "fork_step": null},
            {"branch": 1, "parent": 0, "fork_step": 59},
        ])
    );
    // The abandoned stretch is what the run page fetches: branch 0 after the fork.
    let old = app
        .get(&format!(
            "/api/v1/runs/{id}/scalars/loss?branch=0&from=60&points=1000"
        ))
        .body;
    assert_eq!(old["step"][0], 60);
    assert_eq!(old["step"].as_array().unwrap().len(), 40);
}

#[test]
fn as_many_points_as_steps_give_one_step_per_bucket_whatever_the_first_step() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 1);
    let steps: Vec<_> = (1..=300u64)
        .map(|s| json!({"step": s, "scalars": {"loss": s as f64}}))
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    let r = app
        .get(&format!("/api/v1/runs/{id}/scalars/loss?points=300"))
        .body;
    let got: Vec<u64> = r["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
}

#[test]
fn series_export_as_csv_with_their_non_finite_values() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let steps = json!([
        {"step": 0, "scalars": {"loss/code": 2.5}, "layers": {"hidden_var": [1.0, 2.0]}},
        {"step": 1, "scalars": {"loss/code": "NaN"}, "layers": {"hidden_var": ["Infinity", 2.0]}}
    ]);
    assert_eq!(app.ingest(id, steps).status, 200);
    let r = app.get(&format!("/api/v1/runs/{id}/scalars/loss/code.csv"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "step,min,max,mean,last\n0,2.5,2.5,2.5,2.5\n1,NaN,NaN,NaN,NaN\n"
    );
    let m = app.get(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.csv?columns=1"
    ));
    assert_eq!(
        m.body,
        "step,layer,min,max,mean\n0,0,1,Infinity,Infinity\n0,1,2,2,2\n"
    );
    assert_eq!(
        app.get(&format!("/api/v1/runs/{id}/scalars/nope.csv"))
            .status,
        404
    );
}
