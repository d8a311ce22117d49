//! Who is asking, and what they may do: the server's token, a person's token, or a signed-in
//! browser session with its CSRF token.
//!
//! Reads are open unless the server is `--private`. A write needs `Authorization: Bearer
//! <token>` — the server's own (`KEEL_TOKEN`, an admin) or a person's (`keel users add`) — or
//! the session cookie of a browser that signed in with one of those, plus the session's CSRF
//! token in `X-CSRF-Token` (the cookie alone would let any page the browser visits write). A
//! request with an `Authorization` header is judged by it alone. Each caller has a [`Role`]:
//! [`Operator`] takes an operator or an admin, [`Admin`] an admin. Comparisons with the
//! server's token take the same time wherever the first difference is, and no token ever
//! appears in a response or a log line.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use keel_protocol::Role;

use crate::AppState;
use crate::error::AppError;
use crate::sessions::{self, Lookup};

/// The header a signed-in page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who made a request: `by` names them in the audit log (a person's name, or `token` and
/// `browser` for the server's own token and its sessions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub by: String,
    pub role: Role,
}

impl Caller {
    /// `alice (operator)`, for a page.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.by, self.role)
    }
}

/// Proof that the request comes from an operator or an admin.
#[derive(Clone, Debug)]
pub struct Operator {
    pub by: String,
}

/// Proof that the request comes from an admin.
#[derive(Clone, Debug)]
pub struct Admin {
    pub by: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = judged(parts, state).await?;
        at_least(&caller, Role::Operator, "steering runs")?;
        Ok(Operator { by: caller.by })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = judged(parts, state).await?;
        at_least(&caller, Role::Admin, "launching grids and managing people")?;
        Ok(Admin { by: caller.by })
    }
}

/// The writer of the request, as the body gate found it (it keeps the caller in the request's
/// extensions), else looked up now.
async fn judged(parts: &Parts, state: &AppState) -> Result<Caller, AppError> {
    match parts.extensions.get::<Caller>() {
        Some(caller) => Ok(caller.clone()),
        None => writer(&parts.headers, state).await,
    }
}

fn at_least(caller: &Caller, role: Role, what: &str) -> Result<(), AppError> {
    if caller.role >= role {
        return Ok(());
    }
    let can = match role {
        Role::Admin => "an admin",
        _ => "an operator or an admin",
    };
    Err(AppError::Forbidden(format!(
        "`{}` is {} {}: {what} needs {can}",
        caller.by,
        if caller.role == Role::Operator {
            "an"
        } else {
            "a"
        },
        caller.role
    )))
}

/// The caller of a request that changes something: its bearer token, or its session with the
/// CSRF token. What their role allows is the route's to judge.
pub async fn writer(headers: &HeaderMap, state: &AppState) -> Result<Caller, AppError> {
    match (headers.get(AUTHORIZATION), session_id(headers)) {
        (Some(header), _) => bearer(header, state).await,
        (None, Some(id)) => browser(headers, &id, state).await,
        (None, None) => Err(AppError::Unauthorized(
            "this needs `Authorization: Bearer <token>` or a signed-in session".into(),
        )),
    }
}

/// The caller of a read on a `--private` server: a bearer token or a session (a read needs
/// no CSRF token); `None` when the request has neither, or a wrong one.
pub async fn reader(headers: &HeaderMap, state: &AppState) -> Result<Caller, AppError> {
    match (headers.get(AUTHORIZATION), session_id(headers)) {
        (Some(header), _) => bearer(header, state).await,
        (None, Some(id)) => match state.sessions.lookup(&id).await? {
            Lookup::Valid { caller, .. } => Ok(caller),
            Lookup::Expired | Lookup::Unknown => Err(AppError::Unauthorized(
                "the session has expired or is unknown; sign in again".into(),
            )),
        },
        (None, None) => Err(AppError::Unauthorized(
            "this server is private: reads need `Authorization: Bearer <token>` or a signed-in \
             session"
                .into(),
        )),
    }
}

async fn bearer(header: &axum::http::HeaderValue, state: &AppState) -> Result<Caller, AppError> {
    let given = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            AppError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
        })?;
    match of_token(given, state).await? {
        Some(caller) => Ok(caller),
        None => Err(AppError::Unauthorized("the token is wrong".into())),
    }
}

/// Whose token `given` is: the server's (`token`, an admin) or a person's; `None` for no one's.
pub async fn of_token(given: &str, state: &AppState) -> Result<Option<Caller>, AppError> {
    if is_token(given, state) {
        return Ok(Some(Caller {
            by: "token".into(),
            role: Role::Admin,
        }));
    }
    let user = state.store.user_by_token(given).await?;
    Ok(user.map(|u| Caller {
        by: u.name,
        role: u.role,
    }))
}

/// A session cookie is only half the proof: the CSRF token shows the request comes from a
/// page this server rendered for that session.
async fn browser(headers: &HeaderMap, id: &str, state: &AppState) -> Result<Caller, AppError> {
    let (csrf, caller) = match state.sessions.lookup(id).await? {
        Lookup::Valid { csrf, caller } => (csrf, caller),
        Lookup::Expired => {
            return Err(AppError::Unauthorized(
                "the session has expired; sign in again".into(),
            ));
        }
        Lookup::Unknown => {
            return Err(AppError::Unauthorized(
                "the session is unknown (signed out, or its person was removed); sign in again"
                    .into(),
            ));
        }
    };
    let given = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
    match given {
        Some(given) if same(given, csrf.as_bytes()) => Ok(caller),
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

/// The request's session when it is signed in: who, and the CSRF token for the page to carry.
pub async fn signed_in(
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Option<SignedIn>, AppError> {
    let Some(id) = session_id(headers) else {
        return Ok(None);
    };
    Ok(match state.sessions.lookup(&id).await? {
        Lookup::Valid { csrf, caller } => Some(SignedIn { csrf, caller }),
        Lookup::Expired | Lookup::Unknown => None,
    })
}

/// A signed-in session, as a page needs it.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub csrf: String,
    pub caller: Caller,
}

impl SignedIn {
    /// The CSRF token when the session may do what `role` may, for a page's forms.
    pub fn csrf_for(&self, role: Role) -> Option<String> {
        (self.caller.role >= role).then(|| self.csrf.clone())
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
