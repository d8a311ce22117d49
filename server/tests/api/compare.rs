//! The compare page (`/compare?runs=…`, `/compare?group=…`): over HTTP it names every run and
//! diffs their configs, and refuses malformed or unknown lists with an HTML page; in headless
//! Chromium its charts and heatmaps are drawn without script errors, its loss charts switch
//! to a tokens axis, and its export links fetch the server's figure.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::diverging_step;
use crate::helpers::TestApp;
use crate::webdriver::Browser;

const PATIENCE: Duration = Duration::from_secs(20);

/// Status and body of a GET of a page.
fn page(app: &TestApp, path: &str) -> (u16, String) {
    let (status, kind, body) = app.fetch(path);
    assert!(kind.starts_with("text/html"), "{path}: {kind}");
    (status, String::from_utf8(body).unwrap())
}

/// A run of the proxy ladder: `qk_norm` and `lr` vary, the rest of the config is shared.
fn rung(
    app: &TestApp,
    name: &str,
    variant: &str,
    qk_norm: bool,
    lr: f64,
    steps: u64,
    drift: f64,
) -> i64 {
    let config = json!({"model": {"d_model": 256, "n_layers": 8, "qk_norm": qk_norm,
        "init": "normal_0.02"}, "optimizer": {"lr": lr, "weight_decay": 0.1}, "seq_len": 512});
    let spec = json!({"name": name, "group": "ladder", "variant": variant, "layers": 8,
        "config": config});
    let r = app.post("/api/v1/runs", &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    for start in (0..steps).step_by(500) {
        let batch: Vec<Value> = (start..(start + 500).min(steps))
            .map(|s| {
                let mut v = diverging_step(s, 8);
                // A flatter variance profile for the stabler rungs.
                let var: Vec<Value> = (0..8)
                    .map(|l| json!(1.0 + drift * l as f64 * (s as f64 / 1000.0)))
                    .collect();
                v["layers"]["hidden_var"] = json!(var);
                // The less stable rungs end at a higher loss.
                for key in ["loss", "loss/code", "loss/math", "loss/prose"] {
                    let x = v["scalars"][key].as_f64().unwrap();
                    v["scalars"][key] = json!(x * (1.0 + 0.05 * drift));
                }
                v
            })
            .collect();
        assert_eq!(app.ingest(id, json!(batch)).status, 200);
    }
    id
}

pub fn ladder(app: &TestApp, steps: u64) -> [i64; 3] {
    [
        rung(app, "baseline", "baseline", false, 0.001, steps, 2.0),
        rung(app, "plus-qk-norm", "+qk-norm", true, 0.001, steps, 0.6),
        rung(app, "mup-lr-1e-2", "+mup", true, 0.01, steps, 0.1),
    ]
}

#[test]
fn the_compare_page_names_every_run_and_diffs_only_the_differing_keys() {
    let app = TestApp::spawn();
    let ids = ladder(&app, 40);
    let list = ids.map(|i| i.to_string()).join(",");
    let (status, html) = page(&app, &format!("/compare?runs={list}"));
    assert_eq!(status, 200, "{html}");
    for name in [
        "baseline",
        "plus-qk-norm",
        "mup-lr-1e-2",
        "+qk-norm",
        "ladder",
    ] {
        assert!(html.contains(name), "{name} on the page");
    }
    let diffed: Vec<&str> = html
        .split("<tr data-key=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(diffed, ["model.qk_norm", "optimizer.lr"]);
    // The page carries names, not series.
    assert!(!html.contains("1764300000"));
    // The whole group, in creation order.
    let (status, by_group) = page(&app, "/compare?group=ladder");
    assert_eq!(status, 200);
    for name in ["baseline", "plus-qk-norm", "mup-lr-1e-2"] {
        assert!(by_group.contains(name), "{name} in the group page");
    }
}

#[test]
fn malformed_unknown_and_too_long_lists_are_error_pages() {
    let app = TestApp::spawn();
    let id = app.create_run("only", 2);
    for bad in [
        "/compare",
        "/compare?runs=",
        "/compare?runs=1,x",
        "/compare?runs=1,,2",
        &format!(
            "/compare?runs={}",
            (1..=21)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    ] {
        let (status, html) = page(&app, bad);
        assert_eq!(status, 400, "{bad}: {html}");
    }
    for missing in [
        format!("/compare?runs={id},999"),
        "/compare?group=nobody".into(),
    ] {
        let (status, html) = page(&app, &missing);
        assert_eq!(status, 404, "{missing}");
        assert!(html.contains("not found"), "{html}");
    }
    let (status, _) = page(&app, &format!("/compare?runs={id}"));
    assert_eq!(status, 200);
}

#[test]
fn the_runs_page_offers_to_compare_picked_runs_and_whole_groups() {
    let app = TestApp::spawn();
    let ids = ladder(&app, 2);
    let (_, html) = page(&app, "/");
    assert!(html.contains("id=\"compare-selected\""));
    for id in ids {
        assert!(html.contains(&format!("data-pick=\"{id}\"")));
    }
    assert!(html.contains("href=\"/compare?group=ladder\""));
}

/// Counts a canvas's pixels that are neither transparent nor the page's grey: the drawn ones.
const DRAWN_PIXELS: &str = r#"
const c = arguments[0];
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let drawn = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 3] === 255 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 40) drawn++;
}
return drawn;
"#;

const READY: &str = "const c = document.getElementById('compare');
  const heat = [...document.querySelectorAll('.compare-heatmap canvas')];
  return c.dataset.ready === '1' && heat.every((h) => Number(h.dataset.drawn) > 0)
    && Number(document.getElementById('depth').dataset.drawn) > 0;";

fn drawn(b: &Browser, selector: &str) -> Vec<u64> {
    let script = format!(
        "return [...document.querySelectorAll('{selector}')].map((c) => (function() {{ {DRAWN_PIXELS} }}).apply(null, [c]));"
    );
    let v = b.eval(&script, json!([]));
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

#[test]
fn the_compare_page_draws_its_charts_and_heatmaps_without_script_errors() {
    let app = TestApp::spawn();
    let ids = ladder(&app, 300);
    let list = ids.map(|i| i.to_string()).join(",");
    let Some(b) = Browser::start(1280, 1600) else {
        return;
    };
    b.goto(&app.url(&format!("/compare?runs={list}")));
    b.wait_for("the charts and heatmaps", PATIENCE, READY);
    let heat = drawn(&b, ".compare-heatmap canvas");
    assert_eq!(heat.len(), 3, "one heatmap per run");
    assert!(heat.iter().all(|&n| n > 1000), "heatmaps drawn: {heat:?}");
    let charts = drawn(&b, ".charts canvas, #depth, #heat-legend");
    assert!(charts.iter().all(|&n| n > 100), "charts drawn: {charts:?}");
    let text = b.eval("return document.body.innerText", json!([]));
    for name in ["baseline", "plus-qk-norm", "mup-lr-1e-2"] {
        assert!(text.as_str().unwrap().contains(name), "{name} named");
    }
    tokens_axis_and_export_links(&app, &b);
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}

/// The x axis of every loss chart, and how far it reaches (a script expression).
const X_AXES: &str = "[...document.querySelectorAll('.charts figure.chart canvas')]
  .map((c) => [c.dataset.x, Number(c.dataset.x1)])";

/// Flips the loss charts to tokens and back, and follows the export links (which carry the
/// page's options) to the server's figure.
fn tokens_axis_and_export_links(app: &TestApp, b: &Browser) {
    // 300 steps: the last is step 299, after 300 × 65,536 tokens.
    let over_steps = || {
        let axes = b.eval(&format!("return {X_AXES};"), json!([]));
        let axes = axes.as_array().unwrap().clone();
        assert_eq!(axes.len(), 4, "loss and three sources");
        assert!(axes.iter().all(|a| a == &json!(["step", 299])), "{axes:?}");
    };
    over_steps();
    b.eval(
        r#"document.querySelector('#x-axis [data-x="tokens"]').click();"#,
        json!([]),
    );
    b.wait_for(
        "the loss charts over tokens",
        PATIENCE,
        &format!("return {X_AXES}.every(([x, x1]) => x === 'tokens' && x1 === 300 * 65536);"),
    );
    let charts = drawn(b, ".charts canvas");
    assert!(
        charts.iter().all(|&n| n > 100),
        "charts redrawn: {charts:?}"
    );
    let links = b.eval(
        "return ['png', 'svg', 'csv'].map((f) => document.getElementById('export-' + f).href);",
        json!([]),
    );
    let links: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        links[0].contains("/api/v1/compare.png?runs=") && links[0].contains("x=tokens"),
        "{links:?}"
    );
    assert!(
        links[1].contains("/api/v1/compare.svg?") && links[1].contains("smooth=0.60"),
        "{links:?}"
    );
    assert!(links[2].contains("/api/v1/compare.csv?runs="), "{links:?}");
    let path = &links[0][app.url("").len()..];
    let (status, kind, png) = app.fetch(path);
    assert_eq!((status, kind.as_str()), (200, "image/png"), "{path}");
    assert_eq!(crate::export::png_size(&png).0, 1200);
    b.eval(
        r#"document.querySelector('#x-axis [data-x="steps"]').click();"#,
        json!([]),
    );
    over_steps();
}

/// Writes `docs/screenshots/compare.png`: three rungs of the ladder, 3,000 steps each.
#[test]
#[ignore = "writes docs/screenshots; run by docs/screenshot.sh"]
fn screenshot_of_the_compare_page() {
    let app = TestApp::spawn();
    let ids = ladder(&app, 3000);
    let list = ids.map(|i| i.to_string()).join(",");
    let b = Browser::start(1440, 2000).expect("a browser");
    b.goto(&app.url(&format!("/compare?runs={list}")));
    b.wait_for("the charts and heatmaps", PATIENCE, READY);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compare.png"), b.screenshot()).unwrap();
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}

#[test]
fn ticking_runs_on_the_runs_page_opens_their_comparison() {
    let app = TestApp::spawn();
    let [a, _, c] = ladder(&app, 20);
    let Some(b) = Browser::start(1280, 900) else {
        return;
    };
    b.goto(&app.url("/"));
    for id in [a, c] {
        b.eval(
            &format!(r#"document.querySelector('input[data-pick="{id}"]').click();"#),
            json!([]),
        );
    }
    b.eval(
        "document.getElementById('compare-selected').click();",
        json!([]),
    );
    let url = b.wait_for(
        "the compare page",
        PATIENCE,
        "return location.pathname === '/compare' && location.search",
    );
    let got: Vec<i64> = url.as_str().unwrap()["?runs=".len()..]
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, [a, c]);
    b.wait_for("the charts and heatmaps", PATIENCE, READY);
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}

#[test]
fn the_compare_heatmaps_keep_a_one_step_spike_and_colour_by_the_value_chosen() {
    let app = TestApp::spawn();
    let id = crate::helpers::spiky_run(&app);
    let Some(b) = Browser::start(1280, 1400) else {
        return;
    };
    b.goto(&app.url(&format!("/compare?runs={id}")));
    b.wait_for("the heatmap", PATIENCE, READY);
    let top = || {
        b.eval(
            "return Number(document.getElementById('heat-legend').dataset.top)",
            json!([]),
        )
        .as_f64()
        .unwrap()
    };
    // About 1,000 columns over 3,000 steps: buckets of several steps, and by default each is
    // coloured by its max, so the spike is the top of the scale.
    assert_eq!(top(), 1000.0);
    b.eval(
        "const s = document.getElementById('heat-by'); s.value = 'mean'; s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    let mean_top = top();
    assert!(
        mean_top < 500.0,
        "the mean averages the spike down: {mean_top}"
    );
    let link = b.eval(
        "return document.getElementById('export-png').href",
        json!([]),
    );
    assert!(link.as_str().unwrap().contains("by=mean"), "{link}");
    let errors = b.errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}

#[test]
fn the_pages_place_heatmap_buckets_by_the_servers_rule_and_leave_gaps_empty() {
    let app = TestApp::spawn();
    let Some(b) = Browser::start(800, 600) else {
        return;
    };
    b.goto(&app.url("/"));
    let cases: Vec<Vec<u64>> = vec![
        vec![],
        vec![7],
        vec![0, 16, 32, 48],
        vec![0, 16, 32, 200, 216],
        vec![5, 6, 7, 100, 101, 1000],
        vec![0, 1024, 4096, 5120],
    ];
    let js = b.eval_async(
        "const [cases, done] = arguments;
         import('/static/heatmap.js').then((h) => done(cases.map((c) => h.bucketEnds(c))));",
        json!([cases]),
    );
    for (case, ends) in cases.iter().zip(js.as_array().unwrap()) {
        let ends: Vec<u64> = ends
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            ends,
            keel_server::charts::bucket_ends(case),
            "steps {case:?}"
        );
    }
    // Buckets at 0, 16, 32, then 200, 216 over steps [0, 232) in 232 px: the pixels of the
    // missing steps 48–199 are left empty, not filled with the bucket before them.
    let has = b.eval_async(
        "const [done] = arguments;
         import('/static/heatmap.js').then((h) => {
           const steps = [0, 16, 32, 200, 216];
           const rows = steps.map(() => [1]);
           done([...h.pixelColumns(steps, rows, 1, 232, [0, 232], 'max').has]);
         });",
        json!([]),
    );
    let has: Vec<u64> = has
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(has[..48].iter().all(|&h| h == 1));
    assert!(
        has[48..200].iter().all(|&h| h == 0),
        "the gap is left empty"
    );
    assert!(has[200..].iter().all(|&h| h == 1));
}

/// A run of a width × LR sweep: 20 steps of training loss, validation loss at steps 9 and 19.
fn sweep_run(app: &TestApp, init: &str, d: u64, lr: f64, val: f64) -> i64 {
    let config = json!({"model": {"d_model": d, "n_layers": 4}, "optim": {"lr": lr},
        "stability": {"init": init}});
    let spec = json!({"name": format!("{init}-d{d}-lr{lr}"), "group": "transfer",
        "variant": format!("{init}-d{d}-lr{lr}"), "layers": 4, "config": config});
    let r = app.post("/api/v1/runs", &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let steps: Vec<Value> = (0..20u64)
        .map(|s| {
            let mut scalars = json!({"loss": val + 0.5});
            if s % 10 == 9 {
                scalars["val/loss"] = json!(val + if s == 9 { 0.3 } else { 0.0 });
            }
            json!({"step": s, "scalars": scalars})
        })
        .collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    id
}

#[test]
fn a_width_by_lr_sweep_shows_the_best_lr_per_width_and_ranks_runs_by_validation_loss() {
    let app = TestApp::spawn();
    // µP's best LR stays at 0.01; the standard parametrisation's moves to 0.003 at d 64.
    for (init, d, lr, val) in [
        ("mup", 32, 0.003, 0.72),
        ("mup", 32, 0.01, 0.71),
        ("mup", 64, 0.003, 0.67),
        ("mup", 64, 0.01, 0.66),
        ("sp", 32, 0.003, 0.72),
        ("sp", 32, 0.01, 0.71),
        ("sp", 64, 0.003, 0.65),
        ("sp", 64, 0.01, 0.70),
    ] {
        sweep_run(&app, init, d, lr, val);
    }
    let (status, html) = page(&app, "/compare?group=transfer");
    assert_eq!(status, 200);
    assert!(html.contains("Best LR per width"), "{html}");
    assert!(html.contains("last validation loss"));
    assert!(
        html.contains("<caption>init=mup</caption>") && html.contains("<caption>init=sp</caption>")
    );
    // The winning cells, marked; each table's best-LR column.
    assert!(
        html.contains(r#"<td class="num best">0.6600</td>"#),
        "{html}"
    );
    assert!(html.contains(r#"<td class="num best">0.6500</td>"#));
    let best: Vec<&str> = html
        .match_indices("<td class=\"num\"><b>")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            &rest[..rest.find('<').unwrap()]
        })
        .collect();
    assert_eq!(best, ["0.01", "0.01", "0.01", "0.003"]);
    // Ranked by the last validation loss, not the first.
    assert!(html.contains(r#"data-field="final">0.6500</td>"#));
    assert!(html.contains(r#"data-field="rank">#1</td>"#));
    // The validation loss has its chart.
    assert!(html.contains(r#"data-key="val/loss""#));
    // Runs that are not a sweep get no table.
    let (_, plain) = page(&app, "/compare?runs=1,2");
    assert!(!plain.contains("Best LR per width"));
}
