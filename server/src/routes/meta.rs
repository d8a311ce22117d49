//! `/healthz` and `/api/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/healthz", healthz)
        .get("/api/openapi.json", openapi_json)
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
