//! Who may write: the bearer token, or a signed-in browser session with its CSRF token.
//!
//! Reads are open; every write needs `Authorization: Bearer <KEEL_TOKEN>`, or the session
//! cookie of a browser that signed in with that token plus the session's CSRF token in
//! `X-CSRF-Token` (the cookie alone would let any page the browser visits write). A request
//! with an `Authorization` header is judged by it alone. Comparisons take the same time
//! wherever the first difference is, and no token ever appears in a response or a log line.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;

use crate::AppState;
use crate::error::AppError;
use crate::sessions::{self, Lookup};

/// The header a signed-in page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Proof that the request carries the operator token; `by` names the caller for the audit log.
#[derive(Clone, Debug)]
pub struct Operator {
    pub by: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let headers = &parts.headers;
        match (headers.get(AUTHORIZATION), session_id(headers)) {
            (Some(header), _) => bearer(header, state),
            (None, Some(id)) => browser(headers, &id, state),
            (None, None) => Err(AppError::Unauthorized(
                "this needs `Authorization: Bearer <token>` or a signed-in session".into(),
            )),
        }
    }
}

fn bearer(header: &axum::http::HeaderValue, state: &AppState) -> Result<Operator, AppError> {
    let given = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            AppError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
        })?;
    if is_token(given, state) {
        Ok(Operator { by: "token".into() })
    } else {
        Err(AppError::Unauthorized("the token is wrong".into()))
    }
}

/// A session cookie is only half the proof: the CSRF token shows the request comes from a
/// page this server rendered for that session.
fn browser(headers: &HeaderMap, id: &str, state: &AppState) -> Result<Operator, AppError> {
    let csrf = match state.sessions.lookup(id) {
        Lookup::Valid { csrf } => csrf,
        Lookup::Expired => {
            return Err(AppError::Unauthorized(
                "the session has expired; sign in again".into(),
            ));
        }
        Lookup::Unknown => {
            return Err(AppError::Unauthorized(
                "the session is unknown (signed out, or the server restarted); sign in again"
                    .into(),
            ));
        }
    };
    let given = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
    match given {
        Some(given) if same(given, csrf.as_bytes()) => Ok(Operator {
            by: "browser".into(),
        }),
        Some(_) => Err(AppError::Forbidden("the CSRF token is wrong".into())),
        None => Err(AppError::Forbidden(
            "a signed-in request needs the page's CSRF token in `X-CSRF-Token`".into(),
        )),
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == sessions::COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The CSRF token of the request's session when it is signed in, for the page to carry.
pub fn signed_in(headers: &HeaderMap, state: &AppState) -> Option<String> {
    match state.sessions.lookup(&session_id(headers)?) {
        Lookup::Valid { csrf } => Some(csrf),
        Lookup::Expired | Lookup::Unknown => None,
    }
}

/// Whether `given` is the operator token.
pub fn is_token(given: &str, state: &AppState) -> bool {
    same(given.trim().as_bytes(), state.config.token.as_bytes())
}

/// Constant-time equality (for equal lengths; the length of the token is no secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token: 32 hex digits from the OS generator.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
