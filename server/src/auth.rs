//! Who may write: the bearer token check.
//!
//! Reads are open; every write needs `Authorization: Bearer <KEEL_TOKEN>`. The comparison
//! takes the same time wherever the first difference is, and no token ever appears in a
//! response or a log line.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::AppState;
use crate::error::AppError;

/// Proof that the request carries the operator token; `by` names the caller for the audit log.
#[derive(Clone, Debug)]
pub struct Operator {
    pub by: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            AppError::Unauthorized("this needs `Authorization: Bearer <token>`".into())
        })?;
        let given = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                AppError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
            })?;
        if same(given.trim().as_bytes(), state.config.token.as_bytes()) {
            Ok(Operator { by: "token".into() })
        } else {
            Err(AppError::Unauthorized("the token is wrong".into()))
        }
    }
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
