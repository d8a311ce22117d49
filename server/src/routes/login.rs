//! Signing a browser in and out: `GET /login` (the form), `POST /login` (the operator token
//! in, a session cookie out) and `POST /logout`.
//!
//! The token travels only in a form body, never in a URL (URLs end up in logs and histories).
//! Where to go afterwards (`next`) is only ever a path on this server, so the login page
//! cannot be used to send someone elsewhere.

use askama::Template;
use axum::extract::{Form, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::pages::PageError;
use crate::AppState;
use crate::auth;
use crate::error::AppError;
use crate::routes::table::Routes;
use crate::sessions::COOKIE;

pub fn router() -> Routes {
    Routes::new()
        .get("/login", form)
        .post("/login", sign_in)
        .post("/logout", sign_out)
}

#[derive(Template)]
#[template(path = "pages/login.html")]
pub struct LoginPage {
    pub next: String,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// A path on this server to go to, `/` for anything else (`//host` and `/\host` are other
/// hosts to a browser).
fn local_path(next: Option<String>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p,
        _ => "/".into(),
    }
}

fn login_page(status: StatusCode, page: LoginPage) -> Result<Response, PageError> {
    let body = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok((status, Html(body)).into_response())
}

async fn form(
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Result<Response, PageError> {
    let next = local_path(q.next);
    login_page(StatusCode::OK, LoginPage { next, error: None })
}

async fn sign_in(
    State(state): State<AppState>,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let next = local_path(f.next);
    let caller = match auth::of_token(&f.token, &state).await {
        Ok(Some(c)) if c.by == "token" => auth::Caller {
            by: "browser".into(),
            role: c.role,
        },
        Ok(Some(c)) => c,
        Ok(None) => {
            let error = Some(
                "Wrong token: that is neither this server's token nor a person's (keel users add)."
                    .into(),
            );
            return login_page(StatusCode::UNAUTHORIZED, LoginPage { next, error });
        }
        Err(e) => return Err(PageError::from(e)),
    };
    tracing::info!(who = caller.by, role = %caller.role, "signed in");
    let (id, _csrf) = state.sessions.open(caller).await?;
    let max_age = state.sessions.ttl().as_secs();
    let secure = if state.config.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    Ok(redirect(&next, cookie))
}

/// Ends the session. SameSite=Strict already keeps other sites from posting here with the
/// cookie; signing out is harmless besides.
async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Form<NextQuery>,
) -> Response {
    if let Some(id) = auth::session_id(&headers)
        && let Err(e) = state.sessions.close(&id).await
    {
        tracing::warn!("ending a session: {e}");
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    redirect(&local_path(body.0.next), cookie)
}

fn redirect(to: &str, cookie: String) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, to.to_owned()), (SET_COOKIE, cookie)],
    )
        .into_response()
}
