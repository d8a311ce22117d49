//! Ingesting step records and reading series back at a chosen resolution, as JSON or, for a
//! name ending in `.png` or `.svg`, as a chart (see `images`).

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use keel_protocol::{IngestBatch, IngestReply, StepRecord};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Operator;
use crate::charts::{CellValue, Format};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, AppResult};
use crate::routes::answer::{self, Series, Shape};
use crate::routes::images::{self, Source};
use crate::routes::table::Routes;
use crate::storage::runs::RunRow;
use crate::storage::series::Window;
use crate::views::csv;

pub fn router() -> Routes {
    Routes::new()
        .post("/api/v1/runs/{id}/steps", ingest)
        .get("/api/v1/runs/{id}/scalars/{*key}", scalars)
        .get("/api/v1/runs/{id}/layers/{stat}", layers)
}

/// Steps beyond this are taken for a bug in the sender, not a run.
pub const MAX_STEP: u64 = 1_000_000_000_000;
const MAX_BATCH: usize = 100_000;
const MAX_SERIES_PER_STEP: usize = 1000;
const MAX_KEY: usize = 128;
/// Most buckets one query may ask for.
pub const MAX_BUCKETS: u64 = 100_000;

/// Series names the server fills from a step's own fields.
const IMPLICIT: [&str; 2] = ["time", "tokens"];

fn check_key(what: &str, key: &str) -> AppResult<()> {
    let ok = !key.is_empty()
        && key.chars().count() <= MAX_KEY
        && !key.chars().any(char::is_control)
        && key.trim() == key;
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "{what} name {key:?} must be 1 to {MAX_KEY} characters, without control characters or surrounding spaces"
        )))
    }
}

fn check_step(r: &StepRecord, run: &RunRow) -> AppResult<()> {
    let at = |msg: String| AppError::Invalid(format!("step {}: {msg}", r.step));
    if r.step > MAX_STEP {
        return Err(AppError::Invalid(format!(
            "step {} is beyond the largest step, {MAX_STEP}",
            r.step
        )));
    }
    if r.time.is_some_and(|t| !t.is_finite() || t < 0.0) {
        return Err(at("`time` must be a finite number of seconds ≥ 0".into()));
    }
    if r.tokens.is_some_and(|t| t > i64::MAX as u64) {
        return Err(at("`tokens` is too large".into()));
    }
    if r.scalars.len() + r.layers.len() > MAX_SERIES_PER_STEP {
        return Err(at(format!("at most {MAX_SERIES_PER_STEP} series per step")));
    }
    for key in r.scalars.keys() {
        check_key("scalar", key)?;
        if IMPLICIT.contains(&key.as_str()) {
            return Err(at(format!(
                "`{key}` is a field of the step record, not a scalar"
            )));
        }
    }
    for (stat, values) in &r.layers {
        check_key("layer statistic", stat)?;
        let width = run.width(stat);
        if values.len() != width as usize {
            let of = if width == run.layers {
                "layers"
            } else {
                "ranks"
            };
            return Err(at(format!(
                "`{stat}` has {} values; the run has {width} {of}",
                values.len()
            )));
        }
    }
    Ok(())
}

async fn ingest(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(batch): ApiJson<IngestBatch>,
) -> AppResult<Json<IngestReply>> {
    let run = state.store.run_row(id).await?;
    if batch.steps.is_empty() {
        return Err(AppError::Invalid("the batch has no steps".into()));
    }
    if batch.steps.len() > MAX_BATCH {
        return Err(AppError::Invalid(format!(
            "at most {MAX_BATCH} steps per batch"
        )));
    }
    for record in &batch.steps {
        check_step(record, &run)?;
    }
    let reply = state.store.ingest(id, batch).await?;
    Ok(Json(reply))
}

/// `?from&to&points` (scalars) or `?from&to&columns` (layers), and `branch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub points: Option<u64>,
    pub columns: Option<u64>,
    pub branch: Option<u32>,
    /// The value that colours a heatmap image's cells (`.png`/`.svg` of a layer statistic).
    pub by: Option<String>,
}

impl WindowQuery {
    pub fn window(&self, buckets: Option<u64>, default: u64) -> AppResult<Window> {
        let buckets = buckets.unwrap_or(default);
        if !(1..=MAX_BUCKETS).contains(&buckets) {
            return Err(AppError::BadRequest(format!(
                "`points`/`columns` must be between 1 and {MAX_BUCKETS}"
            )));
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            return Err(AppError::BadRequest("`from` must not be after `to`".into()));
        }
        if self.from.is_some_and(|s| s > MAX_STEP) || self.to.is_some_and(|s| s > MAX_STEP) {
            return Err(AppError::BadRequest(format!("steps go up to {MAX_STEP}")));
        }
        Ok(Window {
            from: self.from,
            to: self.to,
            buckets,
            branch: self.branch,
        })
    }
}

async fn scalars(
    State(state): State<AppState>,
    ApiPath((id, key)): ApiPath<(i64, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> AppResult<Response> {
    if q.columns.is_some() {
        return Err(AppError::BadRequest(
            "a scalar series takes `points`, not `columns`".into(),
        ));
    }
    if q.by.is_some() {
        return Err(AppError::BadRequest(
            "`by` picks a heatmap's cell value; a scalar series has none".into(),
        ));
    }
    let window = q.window(q.points, 2000)?;
    // `loss/code.png` is the chart of `loss/code`.
    if let Some((key, format)) = Format::split(&key) {
        let by = CellValue::default();
        return images::image(&state, id, key, Source::Scalar, window, by, format).await;
    }
    let store = &state.store;
    let run = store.run_row(id).await?;
    // `loss.csv` is the same buckets as a table.
    let (key, shape) = match csv::split(&key) {
        Some(key) => (key, Shape::Csv),
        None => (key.as_str(), Shape::Json),
    };
    let plan = store.plan(&run, false, key, window).await?;
    let series = Series::Scalar(key.to_owned());
    Ok(answer::respond(store.clone(), plan, series, shape))
}

async fn layers(
    State(state): State<AppState>,
    ApiPath((id, stat)): ApiPath<(i64, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> AppResult<Response> {
    if q.points.is_some() {
        return Err(AppError::BadRequest(
            "a layer matrix takes `columns`, not `points`".into(),
        ));
    }
    let window = q.window(q.columns, 1000)?;
    // `hidden_var.png` is the heatmap of `hidden_var`.
    if let Some((stat, format)) = Format::split(&stat) {
        let by = CellValue::parse(q.by.as_deref()).map_err(AppError::BadRequest)?;
        return images::image(&state, id, stat, Source::Layers, window, by, format).await;
    }
    if q.by.is_some() {
        return Err(AppError::BadRequest(
            "`by` is for the heatmap images (`.png`, `.svg`); the matrix has min, max and mean"
                .into(),
        ));
    }
    let store = &state.store;
    let run = store.run_row(id).await?;
    let (stat, shape) = match csv::split(&stat) {
        Some(stat) => (stat, Shape::Csv),
        None => (stat.as_str(), Shape::Json),
    };
    let plan = store.plan(&run, true, stat, window).await?;
    let series = Series::Layers(stat.to_owned(), run.width(stat));
    Ok(answer::respond(store.clone(), plan, series, shape))
}
