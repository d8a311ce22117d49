//! Columnar answers of the series queries: one array per field, index i is bucket i.
//!
//! A bucket's `step` is its first step. Min and max order values by IEEE total order, in
//! which NaN sorts above +Inf: a bucket holding a NaN has a NaN `max` and `mean`, so a
//! diverging step stays visible at every zoom level.

use serde::{Deserialize, Serialize};

use crate::Metric;

/// `GET /api/v1/runs/{id}/scalars/{key}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalarSeries {
    pub key: String,
    pub branch: u32,
    pub step: Vec<u64>,
    pub min: Vec<Metric>,
    pub max: Vec<Metric>,
    pub mean: Vec<Metric>,
    pub last: Vec<Metric>,
}

/// `GET /api/v1/runs/{id}/layers/{stat}`: `min[i][l]` is bucket i, layer l.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerMatrix {
    pub stat: String,
    pub branch: u32,
    pub layers: u32,
    pub step: Vec<u64>,
    pub min: Vec<Vec<Metric>>,
    pub max: Vec<Vec<Metric>>,
    pub mean: Vec<Vec<Metric>>,
}
