//! The compare page (`/compare?runs=…`): several runs side by side. Like the run page it
//! carries no series data; the script fetches each chart at the resolution it draws. What the
//! server does compute is the config diff: every config flattened to dotted keys, and only
//! the keys whose values differ between the runs kept.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use keel_protocol::RunDetail;
use serde_json::{Value, json};

use super::run::{sources, stat_order};
use super::runs::RunRow;

/// The most runs one comparison shows.
pub const MAX_RUNS: usize = 20;

#[derive(Template)]
#[template(path = "pages/compare.html")]
pub struct ComparePage {
    pub runs: Vec<CompareRun>,
    /// The differing config keys, each with one display value per run (in `runs` order).
    pub diff: Vec<DiffRow>,
    /// Keys the configs share with equal values (how many the diff leaves out).
    pub same: usize,
    pub stats: Vec<String>,
    pub sources: Vec<String>,
    /// Whether some run reports token counts (the tokens x axis).
    pub tokens: bool,
    /// Whether some run reports a validation loss (`val/loss`).
    pub val: bool,
    /// The runs as an export query (`runs=1,2,3` or `group=NAME`, URL-encoded): the export
    /// links start from it and the script adds the page's options.
    pub export: String,
    /// JSON for the page script.
    pub boot: String,
    /// "Best LR per width", when the runs sweep the LR across widths (see [`super::sweep`]).
    pub sweep: Vec<super::sweep::SweepTable>,
    /// What the sweep's losses are: "validation loss" or "training loss, mean of the last
    /// tenth".
    pub sweep_metric: &'static str,
}

/// Which loss ranks a run (see the compare page handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalLoss {
    Validation,
    TrainingTail,
}

pub struct CompareRun {
    pub row: RunRow,
    pub variant: String,
    /// The loss the runs are ranked by (see [`ComparePage::with_final_losses`]), shown.
    pub final_loss: String,
    /// 1 for the lowest final loss; `None` without one.
    pub rank: Option<usize>,
    /// The run's colour: an index into the page's series palette.
    pub index: usize,
}

pub struct DiffRow {
    pub key: String,
    pub values: Vec<String>,
}

impl ComparePage {
    /// The page of `details`; `group` when the runs were picked as a group.
    pub fn new(details: &[RunDetail], group: Option<&str>, now: f64) -> ComparePage {
        let mut stats: Vec<String> = Vec::new();
        let mut scalars: Vec<String> = Vec::new();
        for d in details {
            for s in &d.layer_stats {
                if !stats.contains(s) {
                    stats.push(s.clone());
                }
            }
            for s in &d.scalars {
                if !scalars.contains(s) {
                    scalars.push(s.clone());
                }
            }
        }
        let stats = stat_order(&stats);
        let sources = sources(&scalars);
        let configs: Vec<&Value> = details.iter().map(|d| &d.config).collect();
        let (diff, same) = config_diff(&configs);
        let export = match group {
            Some(g) => format!("group={}", url_encode(g)),
            None => {
                let ids: Vec<String> = details.iter().map(|d| d.summary.id.to_string()).collect();
                format!("runs={}", ids.join(","))
            }
        };
        let boot = json!({
            "runs": details.iter().map(|d| json!({
                "id": d.summary.id, "name": d.summary.name, "layers": d.summary.layers,
                "status": d.summary.status, "last_step": d.summary.last_step,
                "scalars": d.scalars, "layer_stats": d.layer_stats,
            })).collect::<Vec<_>>(),
            "stats": stats, "sources": sources, "export": export,
        });
        ComparePage {
            runs: details
                .iter()
                .enumerate()
                .map(|(index, d)| CompareRun {
                    row: RunRow::new(&d.summary, now),
                    variant: d.summary.variant.clone().unwrap_or_default(),
                    final_loss: String::new(),
                    rank: None,
                    index,
                })
                .collect(),
            diff,
            same,
            stats,
            sources,
            tokens: scalars.iter().any(|s| s == "tokens"),
            val: scalars.iter().any(|s| s == "val/loss"),
            export,
            boot: boot.to_string(),
            sweep: Vec::new(),
            sweep_metric: "",
        }
    }

    /// Rank the runs (`details`, as given to [`ComparePage::new`]) by their final losses, in
    /// the same order: fills the "best LR per width" tables when the runs are such a sweep.
    /// When some runs have a validation loss, only those are ranked: training and validation
    /// losses do not compare.
    pub fn with_final_losses(
        mut self,
        details: &[RunDetail],
        finals: &[Option<(f64, FinalLoss)>],
    ) -> Self {
        let val = finals
            .iter()
            .any(|f| matches!(f, Some((_, FinalLoss::Validation))));
        let wanted = if val {
            FinalLoss::Validation
        } else {
            FinalLoss::TrainingTail
        };
        let losses: Vec<Option<f64>> = finals
            .iter()
            .map(|f| f.filter(|(_, k)| *k == wanted).map(|(v, _)| v))
            .collect();
        let mut order: Vec<(usize, f64)> = losses
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.map(|l| (i, l)))
            .collect();
        order.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (rank, (i, loss)) in order.into_iter().enumerate() {
            if let Some(run) = self.runs.get_mut(i) {
                run.final_loss = format!("{loss:.4}");
                run.rank = Some(rank + 1);
            }
        }
        let configs: Vec<&Value> = details.iter().map(|d| &d.config).collect();
        self.sweep = super::sweep::tables(&configs, &losses);
        self.sweep_metric = if val {
            "last validation loss"
        } else {
            "training loss, mean of the last tenth of the steps"
        };
        self
    }
}

/// `s` with every byte but the unreserved ones (RFC 3986) percent-encoded, for a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON value flattened to dotted keys (`optimizer.lr`); arrays are leaves, written as
/// JSON, and so is every scalar except strings, which are written bare.
pub fn flatten(config: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", config, &mut out);
    out
}

/// The keys whose values differ between the configs (a key one config lacks differs, shown
/// as `—`), sorted, and how many keys are the same in all of them.
pub fn config_diff(configs: &[&Value]) -> (Vec<DiffRow>, usize) {
    let flat: Vec<BTreeMap<String, String>> = configs.iter().map(|c| flatten(c)).collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    let mut diff = Vec::new();
    let mut same = 0;
    for key in keys {
        let values: Vec<Option<&String>> = flat.iter().map(|f| f.get(key)).collect();
        if values.iter().all(|v| *v == values[0]) {
            same += 1;
            continue;
        }
        diff.push(DiffRow {
            key: key.clone(),
            values: values
                .into_iter()
                .map(|v| v.cloned().unwrap_or_else(|| "—".into()))
                .collect(),
        });
    }
    (diff, same)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_flatten_to_dotted_keys() {
        let got = flatten(&json!({"model": {"init": "normal_0.02", "qk_norm": true},
            "optimizer": {"lr": 0.001, "betas": [0.9, 0.95]}, "seq_len": 1024}));
        let want: Vec<(&str, &str)> = vec![
            ("model.init", "normal_0.02"),
            ("model.qk_norm", "true"),
            ("optimizer.betas", "[0.9,0.95]"),
            ("optimizer.lr", "0.001"),
            ("seq_len", "1024"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn group_names_are_percent_encoded_for_the_export_links() {
        assert_eq!(url_encode("ladder-2 μP&x"), "ladder-2%20%CE%BCP%26x");
    }

    #[test]
    fn the_diff_keeps_only_the_keys_that_differ() {
        let a = json!({"model": {"qk_norm": false, "d": 512}, "optimizer": {"lr": 0.001}});
        let b = json!({"model": {"qk_norm": true, "d": 512}, "optimizer": {"lr": 0.001}});
        let c = json!({"model": {"qk_norm": true, "d": 512}, "optimizer": {"lr": 0.01, "wd": 0.1}});
        let (diff, same) = config_diff(&[&a, &b, &c]);
        let keys: Vec<&str> = diff.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["model.qk_norm", "optimizer.lr", "optimizer.wd"]);
        assert_eq!(diff[0].values, ["false", "true", "true"]);
        assert_eq!(diff[2].values, ["—", "—", "0.1"]);
        assert_eq!(same, 1);
    }
}
