//! Runs as the store hands them out: rows, series and branches, and steps rebuilt from
//! their stored bytes. The SQL that reads them is each backend's (`sql/runs.rs`).

use keel_protocol::{Metric, RunStatus, RunSummary, Severity, StepRecord};

use super::codec;

/// A run's row, as the writer and the queries need it.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub group: Option<String>,
    pub variant: Option<String>,
    pub tags: Vec<String>,
    pub config: String,
    pub layers: u32,
    pub ranks: Option<u32>,
    pub status: RunStatus,
    pub branch: u32,
    pub last_step: Option<u64>,
    pub last_loss: Option<f64>,
    pub tokens: Option<u64>,
    pub steps: u64,
    pub alerts: u64,
    pub open_incidents: u64,
    /// Alert thresholds set through the API (JSON), over the config's.
    pub thresholds: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
    pub seen_at: f64,
}

impl RunRow {
    /// Values per step of a layer statistic: one per rank for a `rank_*` statistic of a
    /// distributed run, one per block otherwise.
    pub fn width(&self, stat: &str) -> u32 {
        match self.ranks {
            Some(ranks) if stat.starts_with(keel_protocol::names::RANK_PREFIX) => ranks,
            _ => self.layers,
        }
    }

    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id,
            name: self.name.clone(),
            group: self.group.clone(),
            variant: self.variant.clone(),
            tags: self.tags.clone(),
            status: self.status,
            layers: self.layers,
            ranks: self.ranks,
            branch: self.branch,
            last_step: self.last_step,
            last_loss: self.last_loss.map(Metric::new),
            tokens: self.tokens,
            alerts: self.alerts,
            open_incidents: self.open_incidents,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SeriesRow {
    pub id: u32,
    pub layer: bool,
    pub name: String,
    pub width: usize,
}

/// A branch of a run's history: `fork_step` is the last step it shares with `parent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchRow {
    pub branch: u32,
    pub parent: Option<u32>,
    pub fork_step: Option<u64>,
}

pub fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

pub fn severity_from(s: &str) -> Severity {
    match s {
        "warning" => Severity::Warning,
        "critical" => Severity::Critical,
        _ => Severity::Info,
    }
}

/// Rebuilds a step record from its blob, naming series with `series`.
pub fn decode_step(step: u64, data: &[u8], series: &[SeriesRow]) -> StepRecord {
    let mut record = StepRecord::at(step);
    for (id, raw) in codec::entries(data) {
        let Some(s) = series.iter().find(|s| s.id == id) else {
            continue;
        };
        let values = codec::get_f64s(raw);
        match (s.layer, s.name.as_str()) {
            (false, "time") => record.time = values.first().copied(),
            (false, "tokens") => record.tokens = values.first().map(|t| *t as u64),
            (false, _) => {
                record
                    .scalars
                    .insert(s.name.clone(), Metric::new(values[0]));
            }
            (true, _) => {
                let v = values.into_iter().map(Metric::new).collect();
                record.layers.insert(s.name.clone(), v);
            }
        }
    }
    record
}
