//! Every URL of the server, in one place. Each area exposes `router()`; this merges them and
//! adds the layers every request goes through: tracing, the body guard (bodies judged from
//! their headers before they are read), compression (SSE is never compressed), and the static files of the pages (built in, or a folder's).

mod answer;
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
mod table;
mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::AppError;

pub use meta::openapi;
use table::Routes;

/// Every route of the server but the static files (which a `--static-dir` serves instead).
fn routes() -> Routes {
    Routes::new()
        .merge(meta::router())
        .merge(runs::router())
        .merge(data::router())
        .merge(compare::router())
        .merge(live::router())
        .merge(commands::router())
        .merge(launches::router())
        .merge(users::router())
        .merge(overview::router())
        .merge(pages::router())
        .merge(login::router())
}

/// (method, path) of every route, as the router registers them.
pub fn table() -> Vec<(&'static str, &'static str)> {
    let mut list = routes().list;
    list.push(("GET", "/static/{name}"));
    list
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let statics = match &state.config.static_dir {
        Some(dir) => Router::new().nest_service("/static", ServeDir::new(dir)),
        None => Router::new().route("/static/{name}", get(crate::assets::serve)),
    };
    routes()
        .router
        .merge(statics)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_private,
        ))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// On a `--private` server, a request needs a token or a signed-in session before anything
/// else (but for signing in, `/healthz` and the static files): an API call without one is 401,
/// a page redirects to the sign-in form.
async fn guard_private(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let open = matches!(path, "/login" | "/logout" | "/healthz" | "/favicon.ico")
        || path.starts_with("/static/");
    if !state.config.private || open {
        return next.run(req).await;
    }
    match crate::auth::reader(req.headers(), &state).await {
        Ok(_) => next.run(req).await,
        Err(e) if path.starts_with("/api/") => e.into_response(),
        Err(_) => {
            let back = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let to = format!("/login?next={}", percent(&back));
            (
                axum::http::StatusCode::SEE_OTHER,
                [(axum::http::header::LOCATION, to)],
            )
                .into_response()
        }
    }
}

/// `s` with everything but unreserved characters and `/` percent-encoded, for a query value.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Largest body of the sign-in and sign-out forms, the only writes judged by their bodies.
const FORM_LIMIT: u64 = 16 * 1024;

/// Judges a request's body from its headers before anything reads it: too long for the
/// limit (413), no valid token or session for an API write (401/403), or more body bytes in
/// flight server-wide than allowed (503 with `Retry-After`). A refused body is never read:
/// the answer closes the connection instead. An accepted body holds its share of the in-flight
/// bytes until its request is answered; a body without a length (chunked) holds the whole
/// limit, and its reader still stops at the limit.
async fn guard_body(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    let length: Option<u64> = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let chunked = parts.headers.contains_key(TRANSFER_ENCODING);
    if length.unwrap_or(0) == 0 && !chunked {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    let api = parts.uri.path().starts_with("/api/");
    let limit = if api {
        state.config.body_limit as u64
    } else {
        FORM_LIMIT
    };
    let verdict = async {
        if length.is_some_and(|l| l > limit) {
            return Err(AppError::TooLarge(format!(
                "the request body is over the size limit ({limit} bytes)"
            )));
        }
        if api {
            // Kept for the route, which then judges the caller's role without asking again.
            let caller = crate::auth::writer(&parts.headers, &state).await?;
            parts.extensions.insert(caller);
        }
        let want = length.unwrap_or(limit).min(u64::from(u32::MAX)) as u32;
        state
            .bodies
            .clone()
            .try_acquire_many_owned(want)
            .map_err(|_| {
                AppError::Busy(
                    "the server is receiving too much at once; send again shortly".into(),
                    1,
                )
            })
    };
    match verdict.await {
        Ok(permit) => {
            parts.extensions.insert(crate::error::BodyLimit(limit));
            let resp = next
                .run(axum::extract::Request::from_parts(parts, body))
                .await;
            drop(permit);
            resp
        }
        Err(refused) => {
            let mut resp = refused.into_response();
            resp.headers_mut()
                .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
            resp
        }
    }
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn not_found() -> AppError {
    AppError::NotFound("no such page or endpoint".into())
}
