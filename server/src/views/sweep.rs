//! The compare page's "best LR per width" table: when the compared runs sweep the learning rate
//! across model widths (an ablation grid with a `[sweep]`, like `mup-transfer`), each
//! parametrisation gets a table of widths × LRs with the final loss in every cell and the
//! winning LR marked. Under µP the winner stays in one column as the width grows; under the
//! standard parametrisation it moves.
//!
//! The runs are told apart by their configs alone: `optim.lr` and `model.d_model` must both
//! take more than one value, and the other `stability.*` and `optim.*` keys that differ name
//! the parametrisation (`init=mup, mup_lr=true`).

use std::collections::{BTreeMap, BTreeSet};

use super::compare::flatten;

/// One parametrisation's table.
pub struct SweepTable {
    /// `init=mup, mup_logits=true`; empty when every run shares one.
    pub family: String,
    /// The column heads, ascending.
    pub lrs: Vec<String>,
    pub rows: Vec<SweepRow>,
}

pub struct SweepRow {
    pub width: u64,
    /// One cell per LR column: the loss as shown, and whether it is the row's lowest.
    pub cells: Vec<(String, bool)>,
    /// The LR with the lowest loss ("—" when no run of the row has one).
    pub best: String,
}

/// The tables for runs with these configs and final losses (`None`: no loss yet, or not
/// finite), or nothing when the runs are not an LR × width sweep.
pub fn tables(configs: &[&serde_json::Value], losses: &[Option<f64>]) -> Vec<SweepTable> {
    let flat: Vec<BTreeMap<String, String>> = configs.iter().map(|c| flatten(c)).collect();
    let distinct = |key: &str| -> BTreeSet<&str> {
        flat.iter()
            .filter_map(|f| f.get(key).map(String::as_str))
            .collect()
    };
    if distinct("optim.lr").len() < 2 || distinct("model.d_model").len() < 2 {
        return Vec::new();
    }
    // The parametrisation: whatever else in the recipe differs between the runs.
    let family_keys: Vec<&String> = flat
        .iter()
        .flat_map(|f| f.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| {
            (k.starts_with("stability.") || k.starts_with("optim."))
                && k.as_str() != "optim.lr"
                && distinct(k).len() > 1
        })
        .collect();
    // family → width → lr → loss
    let mut by_family: BTreeMap<String, BTreeMap<u64, BTreeMap<String, Option<f64>>>> =
        BTreeMap::new();
    for (f, loss) in flat.iter().zip(losses) {
        let (Some(lr), Some(width)) = (
            f.get("optim.lr"),
            f.get("model.d_model").and_then(|w| w.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let family = family_keys
            .iter()
            .map(|k| {
                let short = k.rsplit('.').next().unwrap_or(k);
                format!("{short}={}", f.get(*k).map_or("—", String::as_str))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let cell = by_family
            .entry(family)
            .or_default()
            .entry(width)
            .or_default()
            .entry(lr.clone())
            .or_insert(None);
        // Two runs of one cell (a repeat): the lower loss.
        *cell = match (*cell, *loss) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let mut lrs: Vec<String> = distinct("optim.lr").into_iter().map(String::from).collect();
    lrs.sort_by(|a, b| {
        let (a, b) = (a.parse::<f64>(), b.parse::<f64>());
        a.unwrap_or(f64::MAX).total_cmp(&b.unwrap_or(f64::MAX))
    });
    by_family
        .into_iter()
        .map(|(family, widths)| SweepTable {
            family,
            rows: widths
                .into_iter()
                .map(|(width, cells)| row(width, &lrs, &cells))
                .collect(),
            lrs: lrs.clone(),
        })
        .collect()
}

fn row(width: u64, lrs: &[String], cells: &BTreeMap<String, Option<f64>>) -> SweepRow {
    let loss = |lr: &String| cells.get(lr).copied().flatten();
    let best = lrs
        .iter()
        .filter_map(|lr| loss(lr).map(|l| (lr, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lr, _)| lr.clone());
    SweepRow {
        width,
        cells: lrs
            .iter()
            .map(|lr| {
                let shown = match (cells.get(lr), loss(lr)) {
                    (_, Some(l)) => format!("{l:.4}"),
                    (Some(_), None) => "n/a".into(),
                    (None, None) => String::new(),
                };
                (shown, best.as_ref() == Some(lr))
            })
            .collect(),
        best: best.unwrap_or_else(|| "—".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(init: &str, d: u64, lr: f64) -> serde_json::Value {
        json!({"model": {"d_model": d, "n_layers": 4}, "optim": {"lr": lr},
               "stability": {"init": init}, "run": {"name": format!("{init}-{d}-{lr}")}})
    }

    #[test]
    fn a_width_by_lr_sweep_gives_one_table_per_parametrisation_with_the_winner_marked() {
        let configs = [
            run("mup", 32, 0.01),
            run("mup", 32, 0.003),
            run("mup", 64, 0.01),
            run("mup", 64, 0.003),
            run("sp", 32, 0.01),
            run("sp", 32, 0.003),
            run("sp", 64, 0.01),
            run("sp", 64, 0.003),
        ];
        let losses = [0.71, 0.72, 0.66, 0.67, 0.71, 0.72, 0.70, 0.65].map(Some);
        let refs: Vec<&serde_json::Value> = configs.iter().collect();
        let t = tables(&refs, &losses);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].family, "init=mup");
        assert_eq!(t[0].lrs, ["0.003", "0.01"]);
        let best: Vec<&str> = t[0].rows.iter().map(|r| r.best.as_str()).collect();
        assert_eq!(best, ["0.01", "0.01"]);
        let best: Vec<&str> = t[1].rows.iter().map(|r| r.best.as_str()).collect();
        assert_eq!(best, ["0.01", "0.003"]);
        assert_eq!(t[1].rows[1].cells[0], ("0.6500".to_string(), true));
    }

    #[test]
    fn runs_that_are_not_a_sweep_get_no_table_and_a_missing_loss_is_shown_as_such() {
        let one_width = [run("mup", 32, 0.01), run("mup", 32, 0.003)];
        let refs: Vec<&serde_json::Value> = one_width.iter().collect();
        assert!(tables(&refs, &[Some(1.0), Some(2.0)]).is_empty());
        let configs = [run("mup", 32, 0.01), run("mup", 64, 0.003)];
        let refs: Vec<&serde_json::Value> = configs.iter().collect();
        let t = tables(&refs, &[None, Some(2.0)]);
        assert_eq!(t[0].rows[0].cells[1].0, "n/a");
        assert_eq!(t[0].rows[0].best, "—");
        assert_eq!(t[0].rows[0].cells[0].0, "");
    }
}
