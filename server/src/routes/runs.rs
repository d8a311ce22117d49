//! Creating, listing and showing runs, and the trainer's status reports.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_protocol::{CreatedRun, RunDetail, RunSpec, RunStatus, RunSummary, StatusReport};

use crate::AppState;
use crate::auth::Operator;
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, AppResult};
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new()
        .post("/api/v1/runs", create)
        .get("/api/v1/runs", list)
        .get("/api/v1/runs/{id}", show)
        .post("/api/v1/runs/{id}/status", report_status)
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
    if spec.ranks.is_some_and(|r| !(1..=MAX_LAYERS).contains(&r)) {
        return Err(AppError::Invalid(format!(
            "`ranks` must be between 1 and {MAX_LAYERS}"
        )));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    op: Operator,
    ApiJson(spec): ApiJson<RunSpec>,
) -> AppResult<(StatusCode, Json<CreatedRun>)> {
    check_spec(&spec)?;
    let id = state.store.create_run(spec, op.by).await?;
    Ok((StatusCode::CREATED, Json(CreatedRun { id })))
}

/// Runs one list answer holds by default, and at most.
pub const LIST_DEFAULT: u32 = 1000;
pub const LIST_MAX: u32 = 10_000;

/// `?limit&before`: a page of the runs list, newest first.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

/// A page of runs, newest first. When older runs remain, a `Link: <…>; rel="next"` header
/// gives the URL of the next page (`before` = the last id of this one).
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> AppResult<Response> {
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    if !(1..=LIST_MAX).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "`limit` must be between 1 and {LIST_MAX}"
        )));
    }
    let mut rows = state.store.list_runs(q.before, limit + 1).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let summaries: Vec<RunSummary> = rows.iter().map(|r| r.summary()).collect();
    let mut response = Json(summaries).into_response();
    if let (true, Some(last)) = (more, rows.last()) {
        let link = format!(
            "</api/v1/runs?limit={limit}&before={}>; rel=\"next\"",
            last.id
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<RunDetail>> {
    Ok(Json(state.store.run_detail(id).await?))
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
    Ok(Json(state.store.run_row(id).await?.summary()))
}
