//! The one error type of the HTTP layer, and extractors that answer in its shape.
//!
//! Every refusal is JSON `{"error": "..."}` with the status that says why (400 malformed,
//! 401 token or session, 403 CSRF token, 404 unknown, 409 conflict, 413 too large, 422 invalid
//! values). A 500 says only that something went wrong inside; its cause is logged once, never
//! sent.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
    /// Cannot be done right now (too much in flight, or another server that must do it does
    /// not answer): 503 with `Retry-After` (seconds).
    #[error("{0}")]
    Busy(String, u32),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Busy(..) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the reason for a refusal, nothing for an internal failure.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => "internal error; the server log has the details".into(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(format!("{what} not found")),
            StoreError::Conflict(why) => AppError::Conflict(why),
            StoreError::Invalid(why) => AppError::Invalid(why),
            StoreError::Db(e) => AppError::Internal(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self {
            tracing::error!(error = ?e, "request failed");
        }
        let body = serde_json::json!({ "error": self.public_message() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let AppError::Busy(_, secs) = &self {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*secs).into());
        }
        resp
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// `Json<T>` whose rejections are [`AppError`]s: syntax errors are 400, values of the wrong
/// type or shape 422, bodies over the limit 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let req = gather(req).await?;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The largest body a request may have, put on it by the body guard (`routes::guard_body`).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub u64);

/// Reads a JSON request's body into one buffer of its announced size, refusing a body of
/// another type before reading it and one over the limit as soon as it is. The body then
/// goes on as a single piece, which the `Json` extractor takes without copying: a body costs
/// its size once, not twice (pieces gathered, then joined).
async fn gather(req: Request) -> Result<Request, AppError> {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    if !json {
        return Err(AppError::BadRequest(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ));
    }
    let limit = parts.extensions.get::<BodyLimit>().map_or(2 << 20, |l| l.0);
    let announced: u64 = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0);
    let too_large = || {
        AppError::TooLarge(format!(
            "the request body is over the size limit ({limit} bytes)"
        ))
    };
    if announced > limit {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(announced as usize);
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            AppError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if (buf.len() + piece.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&piece);
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(buf)))
}

fn json_rejection(r: JsonRejection) -> AppError {
    let text = r.body_text();
    match r {
        JsonRejection::JsonDataError(_) => AppError::Invalid(text),
        JsonRejection::JsonSyntaxError(_) => AppError::BadRequest(text),
        JsonRejection::MissingJsonContentType(_) => AppError::BadRequest(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ),
        JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::TooLarge("the request body is over the size limit".into())
        }
        _ => AppError::BadRequest(text),
    }
}

/// `Query<T>` whose rejections are 400s in our shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> AppError {
    AppError::BadRequest(r.body_text())
}

/// `Path<T>` whose rejections are 400s in our shape (e.g. a run id that is not a number).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(AppError::BadRequest(r.body_text())),
        }
    }
}
