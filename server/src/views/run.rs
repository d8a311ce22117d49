//! The run page (`/runs/{id}`): the frame of its charts, heatmaps, alerts and config.
//!
//! The page carries no series data: the browser fetches each chart at the resolution it
//! draws, so the page costs the same for a run of ten steps and one of a million. What the
//! script needs to start (ids, names, layer count) travels in one `data-boot` attribute.

use askama::Template;
use keel_protocol::{RunDetail, names};
use serde_json::json;

use super::runs::RunRow;

#[derive(Template)]
#[template(path = "pages/run.html")]
pub struct RunPage {
    /// The header: the same display-ready row the runs table shows.
    pub run: RunRow,
    pub layers: u32,
    pub charts: Vec<ChartPanel>,
    pub stats: Vec<String>,
    /// The config as indented JSON.
    pub config: String,
    /// JSON for the page script.
    pub boot: String,
    /// The session's CSRF token; `None` for a visitor who is not signed in (no controls).
    pub csrf: Option<String>,
    /// Who is signed in when they may not steer (`bob (viewer)`).
    pub who: Option<String>,
    /// The run's data sources (from its `loss/<source>` scalars), to prefill the data mix.
    pub sources: Vec<String>,
}

/// One scalar chart: its element id, title and the series it draws.
pub struct ChartPanel {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
}

/// The scalar charts every run page has, in reading order. The loss chart also draws every
/// `loss/<source>` series, the validation chart `val/loss` and every `val/loss/<source>`.
const CHARTS: [ChartPanel; 5] = [
    ChartPanel {
        id: "loss",
        title: "Loss",
        unit: "total and per source",
    },
    ChartPanel {
        id: "val",
        title: "Validation loss",
        unit: "held-out data",
    },
    ChartPanel {
        id: "lr",
        title: "Learning rate",
        unit: "",
    },
    ChartPanel {
        id: "grad_norm",
        title: "Gradient norm",
        unit: "global, before clipping",
    },
    ChartPanel {
        id: "tokens_per_s",
        title: "Throughput",
        unit: "tokens / s",
    },
];

/// Heatmaps in the order the stability recipe reads them: variance growth with depth first,
/// then runaway logits, per-layer gradients and update sizes.
const STAT_ORDER: [&str; 8] = [
    names::HIDDEN_VAR,
    names::ATTN_LOGIT_MAX,
    names::GRAD_NORM,
    names::UPDATE_RATIO,
    names::HIDDEN_RMS,
    names::ACT_ABSMAX,
    names::PARAM_NORM,
    names::NORM_GAIN,
];

/// The run's layer statistics, known ones in [`STAT_ORDER`], then the rest as they arrived.
pub fn stat_order(stats: &[String]) -> Vec<String> {
    let known = STAT_ORDER
        .iter()
        .filter(|s| stats.iter().any(|x| x == *s))
        .map(|s| s.to_string());
    let other = stats
        .iter()
        .filter(|s| !STAT_ORDER.contains(&s.as_str()))
        .cloned();
    known.chain(other).collect()
}

impl RunPage {
    pub fn new(run: &RunDetail, now: f64) -> RunPage {
        let s = &run.summary;
        let stats = stat_order(&run.layer_stats);
        let boot = json!({
            "id": s.id, "layers": s.layers, "ranks": s.ranks, "branch": s.branch, "status": s.status,
            "last_step": s.last_step, "scalars": run.scalars, "layer_stats": stats,
        });
        RunPage {
            run: RunRow::new(s, now),
            layers: s.layers,
            charts: CHARTS.into_iter().collect(),
            stats,
            config: serde_json::to_string_pretty(&run.config).unwrap_or_default(),
            boot: boot.to_string(),
            csrf: None,
            who: None,
            sources: sources(&run.scalars),
        }
    }

    /// The page as shown to a signed-in session (`Some`) or a visitor (`None`): an operator's
    /// or an admin's carries the CSRF token and the controls, a viewer's says who they are.
    pub fn signed_in(mut self, session: Option<crate::auth::SignedIn>) -> RunPage {
        if let Some(s) = session {
            self.csrf = s.csrf_for(keel_protocol::Role::Operator);
            if self.csrf.is_none() {
                self.who = Some(s.caller.describe());
            }
        }
        self
    }
}

/// The data sources a run reports a loss for (`loss/<source>`), sorted.
pub fn sources(scalars: &[String]) -> Vec<String> {
    let mut out: Vec<String> = scalars
        .iter()
        .filter_map(|k| k.strip_prefix("loss/"))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

impl RunPage {
    /// The page as HTML (for callers that do not use askama themselves, like the benchmark).
    pub fn to_html(&self) -> askama::Result<String> {
        self.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sources_come_from_the_per_source_losses() {
        let got = sources(&[
            "loss".into(),
            "loss/prose".into(),
            "lr".into(),
            "loss/code".into(),
        ]);
        assert_eq!(got, ["code", "prose"]);
    }

    #[test]
    fn hidden_var_leads_and_unknown_statistics_follow_in_arrival_order() {
        let got = stat_order(&["zeta".into(), "grad_norm".into(), "hidden_var".into()]);
        assert_eq!(got, ["hidden_var", "grad_norm", "zeta"]);
    }
}
