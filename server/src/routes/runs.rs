//! Creating, listing and showing runs, and the trainer's status reports.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_protocol::{CreatedRun, RunDetail, RunSpec, RunStatus, RunSummary, StatusReport};

use crate::AppState;
use crate::auth::Operator;
use crate::error::{ApiJson, ApiPath, AppError, AppResult};
use crate::storage::{WriteOp, runs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runs", post(create).get(list))
        .route("/api/v1/runs/{id}", get(show))
        .route("/api/v1/runs/{id}/status", post(report_status))
}

/// Longest name, group, variant or tag.
const MAX_NAME: usize = 200;
const MAX_TAGS: usize = 64;
pub const MAX_LAYERS: u32 = 4096;

fn check_name(what: &str, s: &str) -> AppResult<()> {
    if s.trim().is_empty() {
        return Err(AppError::Invalid(format!("`{what}` must not be empty")));
    }
    if s.chars().count() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(AppError::Invalid(format!(
            "`{what}` must be at most {MAX_NAME} characters, without control characters"
        )));
    }
    Ok(())
}

fn check_spec(spec: &RunSpec) -> AppResult<()> {
    check_name("name", &spec.name)?;
    for (what, v) in [("group", &spec.group), ("variant", &spec.variant)] {
        if let Some(v) = v {
            check_name(what, v)?;
        }
    }
    if spec.tags.len() > MAX_TAGS {
        return Err(AppError::Invalid(format!("at most {MAX_TAGS} tags")));
    }
    for tag in &spec.tags {
        check_name("tags", tag)?;
    }
    if !(1..=MAX_LAYERS).contains(&spec.layers) {
        return Err(AppError::Invalid(format!(
            "`layers` must be between 1 and {MAX_LAYERS}"
        )));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    _op: Operator,
    ApiJson(spec): ApiJson<RunSpec>,
) -> AppResult<(StatusCode, Json<CreatedRun>)> {
    check_spec(&spec)?;
    let id = state.store.write(|r| WriteOp::CreateRun(spec, r)).await?;
    Ok((StatusCode::CREATED, Json(CreatedRun { id })))
}

async fn list(State(state): State<AppState>) -> AppResult<Json<Vec<RunSummary>>> {
    let rows = runs::list_runs(state.store.reader()).await?;
    Ok(Json(rows.iter().map(|r| r.summary()).collect()))
}

async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<RunDetail>> {
    Ok(Json(runs::run_detail(state.store.reader(), id).await?))
}

async fn report_status(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(report): ApiJson<StatusReport>,
) -> AppResult<Json<RunSummary>> {
    if report.status == RunStatus::Lost {
        return Err(AppError::Invalid(
            "`lost` is decided by the server, not reported".into(),
        ));
    }
    state
        .store
        .set_status(id, report.status, report.message)
        .await?;
    Ok(Json(
        runs::run_row(state.store.reader(), id).await?.summary(),
    ))
}
