//! Launching ablation grids: the grids there are, launching one, the launches, cancelling one.
//!
//! Launching and cancelling are an admin's (the server's token, an admin's token, or a session
//! signed in with one, with its CSRF token). A server started without launching answers every one of these with 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keel_protocol::{GridInfo, LaunchRecord, LaunchRequest};

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiJson, ApiPath, AppError, AppResult};
use crate::launches::Launches;
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/api/v1/grids", grids)
        .post("/api/v1/launches", launch)
        .get("/api/v1/launches", list)
        .get("/api/v1/launches/{id}", one)
        .post("/api/v1/launches/{id}/cancel", cancel)
        .post(
            "/api/v1/launches/{id}/variants/{variant}/cancel",
            cancel_variant,
        )
}

fn launches(state: &AppState) -> AppResult<&Launches> {
    state.launches.as_ref().ok_or_else(|| {
        AppError::NotFound(
            "this server does not launch trainers (start it with `keel serve --max-trainers 1` or more)"
                .into(),
        )
    })
}

async fn grids(State(state): State<AppState>) -> AppResult<Json<Vec<GridInfo>>> {
    Ok(Json(launches(&state)?.grids().await?))
}

async fn launch(
    State(state): State<AppState>,
    op: Admin,
    ApiJson(req): ApiJson<LaunchRequest>,
) -> AppResult<(StatusCode, Json<LaunchRecord>)> {
    let record = launches(&state)?.launch(req, op.by).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn list(State(state): State<AppState>) -> AppResult<Json<Vec<LaunchRecord>>> {
    Ok(Json(launches(&state)?.list_all().await?))
}

async fn one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<LaunchRecord>> {
    Ok(Json(launches(&state)?.find(id).await?))
}

async fn cancel(
    State(state): State<AppState>,
    _op: Admin,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<LaunchRecord>> {
    Ok(Json(launches(&state)?.cancel_anywhere(id, None).await?))
}

async fn cancel_variant(
    State(state): State<AppState>,
    _op: Admin,
    ApiPath((id, variant)): ApiPath<(i64, String)>,
) -> AppResult<Json<LaunchRecord>> {
    let launches = launches(&state)?;
    Ok(Json(launches.cancel_anywhere(id, Some(&variant)).await?))
}
