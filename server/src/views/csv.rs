//! Series as CSV, for spreadsheets and scripts: one row per bucket (scalars) or per bucket and
//! layer (layer statistics). Non-finite values are written as in the JSON API — `NaN`,
//! `Infinity`, `-Infinity` — so a diverged step survives the export.

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

pub fn scalars(s: &ScalarSeries) -> String {
    let mut out = String::from("step,min,max,mean,last\n");
    for i in 0..s.step.len() {
        let _ = write!(out, "{}", s.step[i]);
        for m in [s.min[i], s.max[i], s.mean[i], s.last[i]] {
            out.push(',');
            cell(&mut out, m);
        }
        out.push('\n');
    }
    out
}

pub fn layers(m: &LayerMatrix) -> String {
    let mut out = String::from("step,layer,min,max,mean\n");
    for i in 0..m.step.len() {
        for layer in 0..m.min[i].len() {
            let _ = write!(out, "{},{layer}", m.step[i]);
            for v in [m.min[i][layer], m.max[i][layer], m.mean[i][layer]] {
                out.push(',');
                cell(&mut out, v);
            }
            out.push('\n');
        }
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
