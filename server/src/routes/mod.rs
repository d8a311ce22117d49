//! Every URL of the server, in one place. Each area exposes `router()`; this merges them and
//! adds the layers every request goes through: tracing, the body limit, compression (SSE is
//! never compressed), and the static files of the pages.

mod commands;
mod data;
mod live;
mod meta;
mod runs;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::AppError;

pub use meta::openapi;

pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let statics = ServeDir::new(&state.config.static_dir);
    Router::new()
        .merge(meta::router())
        .merge(runs::router())
        .merge(data::router())
        .merge(live::router())
        .merge(commands::router())
        .nest_service("/static", statics)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn not_found() -> AppError {
    AppError::NotFound("no such page or endpoint".into())
}
