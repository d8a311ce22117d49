//! The comparison exported whole (`/api/v1/compare.png`, `.svg`, `.csv`): a figure of the
//! asked size that names every run, draws their curves, profiles and heatmaps on one colour
//! scale and marks a diverged run's NaN; refusals in JSON for bad input.

use serde_json::{Value, json};

use keel_server::charts::colormap::color_at;

use crate::browser::diverging_step;
use crate::compare::ladder;
use crate::helpers::TestApp;

/// A fourth rung that diverges: NaN losses at steps 150–152, +Infinity at 160.
fn diverged(app: &TestApp, steps: u64) -> i64 {
    let spec = json!({"name": "no-clip-diverged", "group": "ladder", "variant": "-grad-clip",
        "layers": 8, "config": {"model": {"d_model": 256, "n_layers": 8}, "optimizer": {"lr": 0.03}}});
    let r = app.post("/api/v1/runs", &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let batch: Vec<Value> = (0..steps)
        .map(|s| {
            let mut v = diverging_step(s, 8);
            if (150..153).contains(&s) {
                v["scalars"]["loss"] = json!("NaN");
            } else if s == 160 {
                v["scalars"]["loss"] = json!("Infinity");
            }
            v
        })
        .collect();
    for chunk in batch.chunks(500) {
        assert_eq!(app.ingest(id, json!(chunk)).status, 200);
    }
    id
}

fn four_runs(app: &TestApp) -> String {
    let [a, b, c] = ladder(app, 300);
    let d = diverged(app, 300);
    format!("{a},{b},{c},{d}")
}

/// Width and height from a PNG's IHDR, after checking the signature.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The PNG's pixels, as RGB triples.
fn pixels(png: &[u8]) -> Vec<[u8; 3]> {
    let mut reader = png::Decoder::new(png).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf[..info.buffer_size()]
        .chunks(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

#[test]
fn the_comparison_exports_as_a_png_with_every_run_drawn_and_the_nan_marked() {
    let app = TestApp::spawn();
    let list = four_runs(&app);
    let (status, kind, png) = app.fetch(&format!("/api/v1/compare.png?runs={list}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert_eq!(kind, "image/png");
    let (w, h) = png_size(&png);
    assert_eq!(w, 1200, "the default width");
    assert!(
        (900..2400).contains(&h),
        "a height that fits the content: {h}"
    );
    let pixels = pixels(&png);
    let count = |want: &dyn Fn(&[u8; 3]) -> bool| pixels.iter().filter(|p| want(p)).count();
    // Each run's colour (keel.css --series): its legend sample, curve, profile and swatch.
    for rgb in [
        [0x25, 0x63, 0xeb],
        [0xe8, 0x71, 0x0a],
        [0x0f, 0x9d, 0x58],
        [0x93, 0x34, 0xe6],
    ] {
        assert!(count(&|p| *p == rgb) > 200, "{rgb:?} is drawn");
    }
    // The heatmaps are coloured, not blank: four of about 220 × 120 px, in viridis.
    let viridis: std::collections::HashSet<[u8; 3]> =
        (0..=4096).map(|i| color_at(i as f64 / 4096.0)).collect();
    let heat = count(&|p| viridis.contains(p));
    assert!(heat > 60_000, "{heat} pixels of the colour scale");

    let sized = format!("/api/v1/compare.png?runs={list}&width=900&height=1500&x=tokens&log=1");
    let (status, _, png) = app.fetch(&sized);
    assert_eq!(status, 200);
    assert_eq!(png_size(&png), (900, 1500));
}

#[test]
fn the_svg_names_every_run_and_has_its_axes_and_a_labelled_colour_bar() {
    let app = TestApp::spawn();
    let list = four_runs(&app);
    let path = format!("/api/v1/compare.svg?runs={list}&x=tokens&log=1&smooth=0.3&step=100");
    let (status, kind, svg) = app.fetch(&path);
    assert_eq!(status, 200);
    assert_eq!(kind, "image/svg+xml");
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
    for text in [
        "baseline",
        "plus-qk-norm · +qk-norm",
        "mup-lr-1e-2 · +mup",
        "no-clip-diverged · -grad-clip",
        // The loss panel over tokens, with its options; the depth profile at the step asked.
        "loss · EMA smoothing 0.30 · log y",
        ">\ntokens\n<",
        "hidden_var by layer (log y) at step 100",
        ">\nlayer\n<",
        // The heatmaps and their colour bar's labels.
        "hidden_var · layer × step, max per bucket, one colour scale",
        ">\nNaN\n<",
        ">\n±∞\n<",
        ">\nlog\n<",
    ] {
        assert!(svg.contains(text), "{text:?} in the SVG");
    }
    // The colour bar's gradient runs from viridis' first stop to its last.
    let svg = svg.to_uppercase();
    for stop in ["#440154", "#FDE725"] {
        assert!(
            svg.contains(&format!("FILL=\"{stop}\"")),
            "{stop} in the SVG"
        );
    }
    // A red marker (#e61e1e) hangs over each of the diverged run's non-finite buckets: NaN at
    // steps 150, 151, 152 and +Infinity at 160, in their own buckets at this width.
    let markers = svg
        .split("<POLYGON")
        .skip(1)
        .filter(|p| p.contains("FILL=\"#E61E1E\""))
        .count();
    assert_eq!(markers, 4, "one marker per non-finite bucket");
}

#[test]
fn the_compared_loss_exports_as_one_csv_with_a_column_per_run() {
    let app = TestApp::spawn();
    let list = four_runs(&app);
    let path = format!("/api/v1/compare.csv?runs={list}&points=300");
    let (status, kind, csv) = app.fetch(&path);
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/csv"), "{kind}");
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,baseline,plus-qk-norm,mup-lr-1e-2,no-clip-diverged"
    );
    assert_eq!(
        lines.len(),
        301,
        "one row per step: 300 points for 300 steps"
    );
    assert_eq!(lines[151].split(',').nth(4), Some("NaN"));
    assert_eq!(lines[161].split(',').nth(4), Some("Infinity"));
    assert!(lines[1..].iter().all(|l| l.split(',').count() == 5));
    // By group, in fewer buckets.
    let (status, _, csv) = app.fetch("/api/v1/compare.csv?group=ladder&points=10");
    assert_eq!(status, 200);
    assert!(String::from_utf8(csv).unwrap().lines().count() <= 11);
}

#[test]
fn bad_export_requests_are_refused_in_json() {
    let app = TestApp::spawn();
    let id = app.create_run("only", 2);
    let twenty_one: Vec<String> = (1..=21).map(|i| i.to_string()).collect();
    let cases: Vec<(String, u16)> = vec![
        (format!("png?runs={id},999"), 404),
        ("svg?group=nobody".into(), 404),
        (format!("png?runs={id}&stat=nope"), 404),
        (format!("csv?runs={id}&key=nope"), 404),
        ("png".into(), 400),
        ("png?runs=1,x".into(), 400),
        (format!("svg?runs={}", twenty_one.join(",")), 400),
        (format!("png?runs={id}&smooth=abc"), 400),
        (format!("png?runs={id}&colour=red"), 400),
        (format!("csv?runs={id}&points=0"), 400),
        (format!("png?runs={id}&x=time"), 422),
        (format!("png?runs={id}&log=maybe"), 422),
        (format!("png?runs={id}&smooth=1.5"), 422),
        (format!("png?runs={id}&width=100"), 422),
        (format!("png?runs={id}&width=5000"), 422),
        (format!("svg?runs={id}&height=100"), 422),
        (format!("png?runs={id}&step=99999999999999999"), 422),
    ];
    for (path, want) in cases {
        let r = app.get(&format!("/api/v1/compare.{path}"));
        assert_eq!(r.status, want, "{path}: {}", r.body);
        assert!(r.body["error"].is_string(), "{path}: {}", r.body);
    }
    // Twenty runs with a step each, and too short a figure for them: 422 saying how high.
    let many: Vec<String> = (0..20)
        .map(|i| {
            let run = app.create_run(&format!("r{i}"), 2);
            let step = json!([{"step": 0, "scalars": {"loss": 1.0},
                "layers": {"hidden_var": [1.0, 2.0]}}]);
            assert_eq!(app.ingest(run, step).status, 200);
            run.to_string()
        })
        .collect();
    let path = format!("/api/v1/compare.png?runs={}&height=400", many.join(","));
    let r = app.get(&path);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("at least"));
    // A run without any steps still draws: empty panels, no error.
    let (status, kind, _) = app.fetch(&format!("/api/v1/compare.png?runs={id}"));
    assert_eq!((status, kind.as_str()), (200, "image/png"));
}

/// Writes `docs/screenshots/compare-export.png`: three rungs of the ladder and a diverging
/// run, 3,000 steps each, exported with a log y axis.
#[test]
#[ignore = "writes docs/screenshots; run by docs/screenshot.sh"]
fn screenshot_of_the_exported_comparison() {
    let app = TestApp::spawn();
    let [a, b, c] = ladder(&app, 3000);
    let d = diverged(&app, 3000);
    let path = format!("/api/v1/compare.png?runs={a},{b},{c},{d}&log=1");
    let (status, _, png) = app.fetch(&path);
    assert_eq!(status, 200);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::write(dir.join("compare-export.png"), png).unwrap();
}

#[test]
fn heatmap_images_and_the_export_colour_by_max_unless_asked_otherwise() {
    let app = TestApp::spawn();
    let id = crate::helpers::spiky_run(&app);
    let svg = |path: &str| {
        let (status, kind, body) = app.fetch(path);
        assert_eq!((status, kind.as_str()), (200, "image/svg+xml"), "{path}");
        String::from_utf8(body).unwrap()
    };
    let heat = format!("/api/v1/runs/{id}/layers/hidden_var.svg?columns=1000");
    assert!(svg(&heat).contains("max per bucket"));
    assert!(svg(&format!("{heat}&by=mean")).contains("mean per bucket"));
    assert!(svg(&format!("{heat}&by=min")).contains("min per bucket"));
    let (_, _, max_png) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.png?columns=1000"
    ));
    let (_, _, mean_png) = app.fetch(&format!(
        "/api/v1/runs/{id}/layers/hidden_var.png?columns=1000&by=mean"
    ));
    assert_ne!(pixels(&max_png), pixels(&mean_png));
    let fig = format!("/api/v1/compare.svg?runs={id}");
    assert!(svg(&fig).contains("hidden_var · layer × step, max per bucket"));
    assert!(svg(&format!("{fig}&by=mean")).contains("mean per bucket"));
    for (path, status) in [
        (format!("{heat}&by=median"), 400),
        (format!("/api/v1/runs/{id}/layers/hidden_var?by=max"), 400),
        (format!("/api/v1/runs/{id}/scalars/loss?by=max"), 400),
        (format!("{fig}&by=median"), 422),
    ] {
        let r = app.get(&path);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(
            r.body["error"].as_str().unwrap().contains("by"),
            "{}",
            r.body
        );
    }
}
