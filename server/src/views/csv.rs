//! Series as CSV, for spreadsheets and scripts: one row per bucket (scalars) or per bucket and
//! layer (layer statistics), or one row per bucket step and a column per run (a comparison). Non-finite values are written as in the JSON API — `NaN`,
//! `Infinity`, `-Infinity` — so a diverged step survives the export.

use std::collections::BTreeMap;
use std::fmt::Write;

use keel_protocol::{LayerMatrix, Metric, ScalarSeries};

/// The `.csv` ending of a series name, if it has one: `loss/code.csv` → `loss/code`.
pub fn split(name: &str) -> Option<&str> {
    name.strip_suffix(".csv")
}

fn cell(out: &mut String, m: Metric) {
    let v = m.get();
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("Infinity");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Infinity");
    } else {
        // `{}` of an f64 is the shortest text that reads back to the same value.
        let _ = write!(out, "{v}");
    }
}

pub const SCALARS_HEADER: &str = "step,min,max,mean,last\n";
pub const LAYERS_HEADER: &str = "step,layer,min,max,mean\n";

pub fn scalars(s: &ScalarSeries) -> String {
    let mut out = String::from(SCALARS_HEADER);
    scalar_rows(&mut out, s);
    out
}

/// The rows of `s`, without the header: an answer read in chunks writes them chunk by chunk.
pub fn scalar_rows(out: &mut String, s: &ScalarSeries) {
    for i in 0..s.step.len() {
        let _ = write!(out, "{}", s.step[i]);
        for m in [s.min[i], s.max[i], s.mean[i], s.last[i]] {
            out.push(',');
            cell(out, m);
        }
        out.push('\n');
    }
}

pub fn layers(m: &LayerMatrix) -> String {
    let mut out = String::from(LAYERS_HEADER);
    layer_rows(&mut out, m);
    out
}

/// The rows of `m`, without the header.
pub fn layer_rows(out: &mut String, m: &LayerMatrix) {
    for i in 0..m.step.len() {
        for layer in 0..m.min[i].len() {
            let _ = write!(out, "{},{layer}", m.step[i]);
            for v in [m.min[i][layer], m.max[i][layer], m.mean[i][layer]] {
                out.push(',');
                cell(out, v);
            }
            out.push('\n');
        }
    }
}

/// A header cell: quoted when it holds a comma, a quote or a line break.
fn text(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        let _ = write!(out, "\"{}\"", s.replace('"', "\"\""));
    } else {
        out.push_str(s);
    }
}

/// One scalar of several runs: `step,<name>,<name>,…` with each run's bucket mean. Rows are
/// the bucket steps of all the runs, in order; a run without a bucket there leaves its cell
/// empty. Read every run over the same window and buckets and the rows line up.
pub fn compared(names: &[String], runs: &[Option<ScalarSeries>]) -> String {
    let mut rows: BTreeMap<u64, Vec<Option<Metric>>> = BTreeMap::new();
    for (i, s) in runs.iter().enumerate() {
        for (step, mean) in s.iter().flat_map(|s| s.step.iter().zip(&s.mean)) {
            rows.entry(*step).or_insert_with(|| vec![None; runs.len()])[i] = Some(*mean);
        }
    }
    let mut out = String::from("step");
    for name in names {
        out.push(',');
        text(&mut out, name);
    }
    out.push('\n');
    for (step, values) in rows {
        let _ = write!(out, "{step}");
        for v in values {
            out.push(',');
            if let Some(m) = v {
                cell(&mut out, m);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scalar_series_keeps_its_non_finite_values() {
        let s = ScalarSeries {
            key: "loss".into(),
            branch: 0,
            step: vec![0, 10],
            min: vec![Metric(1.5), Metric::NAN],
            max: vec![Metric(2.0), Metric(f64::INFINITY)],
            mean: vec![Metric(0.1 + 0.2), Metric::NAN],
            last: vec![Metric(2.0), Metric(f64::NEG_INFINITY)],
        };
        assert_eq!(
            scalars(&s),
            "step,min,max,mean,last\n0,1.5,2,0.30000000000000004,2\n10,NaN,Infinity,NaN,-Infinity\n"
        );
    }

    #[test]
    fn compared_runs_share_rows_by_step_and_leave_missing_buckets_empty() {
        let series = |step: Vec<u64>, mean: Vec<f64>| ScalarSeries {
            key: "loss".into(),
            min: mean.iter().map(|v| Metric(*v)).collect(),
            max: mean.iter().map(|v| Metric(*v)).collect(),
            last: mean.iter().map(|v| Metric(*v)).collect(),
            mean: mean.into_iter().map(Metric).collect(),
            step,
            branch: 0,
        };
        let a = series(vec![0, 10, 20], vec![4.0, 3.5, f64::NAN]);
        let b = series(vec![0, 10], vec![5.0, 4.25]);
        let names = ["base".to_owned(), "wd, 0.1".to_owned(), "empty".to_owned()];
        assert_eq!(
            compared(&names, &[Some(a), Some(b), None]),
            "step,base,\"wd, 0.1\",empty\n0,4,5,\n10,3.5,4.25,\n20,NaN,,\n"
        );
    }

    #[test]
    fn a_layer_matrix_has_a_row_per_bucket_and_layer() {
        let m = LayerMatrix {
            stat: "hidden_var".into(),
            branch: 0,
            layers: 2,
            step: vec![5],
            min: vec![vec![Metric(1.0), Metric(2.0)]],
            max: vec![vec![Metric(3.0), Metric::NAN]],
            mean: vec![vec![Metric(2.0), Metric::NAN]],
        };
        assert_eq!(
            layers(&m),
            "step,layer,min,max,mean\n5,0,1,3,2\n5,1,2,NaN,NaN\n"
        );
        assert_eq!(split("loss/code.csv"), Some("loss/code"));
        assert_eq!(split("loss"), None);
    }
}
