//! `/healthz` and `/api/openapi.json`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi_json))
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.store.ping().await {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
    } else {
        let body =
            serde_json::json!({"status": "unavailable", "error": "the database does not answer"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi())
}

/// The OpenAPI description, kept as a document beside the code it describes.
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is valid JSON")
}
