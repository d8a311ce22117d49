//! Every URL of the server, in one place. Each area exposes `router()`; this merges them and
//! adds the layers every request goes through: tracing, the body limit, compression (SSE is
//! never compressed), and the static files of the pages (built in, or a folder's).

mod commands;
mod compare;
mod data;
mod images;
mod launches;
mod live;
mod login;
mod meta;
mod overview;
mod pages;
mod runs;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::AppError;

pub use meta::openapi;

pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let statics = match &state.config.static_dir {
        Some(dir) => Router::new().nest_service("/static", ServeDir::new(dir)),
        None => Router::new().route("/static/{name}", get(crate::assets::serve)),
    };
    Router::new()
        .merge(meta::router())
        .merge(runs::router())
        .merge(data::router())
        .merge(compare::router())
        .merge(live::router())
        .merge(commands::router())
        .merge(launches::router())
        .merge(overview::router())
        .merge(pages::router())
        .merge(login::router())
        .merge(statics)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, read_body))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Reads every request body to its end (up to the limit) before any handler runs. A request
/// refused early — no token, unknown run — has then still been read whole, so the connection
/// stays usable instead of being closed under a client that is still sending.
async fn read_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(req).await
        }
        Err(_) => {
            AppError::TooLarge("the request body is over the size limit".into()).into_response()
        }
    }
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn not_found() -> AppError {
    AppError::NotFound("no such page or endpoint".into())
}
