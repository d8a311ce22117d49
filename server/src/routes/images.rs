//! Charts as images: `…/layers/{stat}.png|.svg` and `…/scalars/{key}.png|.svg` (the whole
//! comparison of several runs is drawn by `compare`). The series
//! routes in `data` hand over when the name ends in an image format; the query is the same as
//! for the JSON answer, and so are its refusals.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::charts::{self, CellValue, Format};
use crate::error::{AppError, AppResult};
use crate::storage::series::Window;

/// What to draw: a layer statistic or a scalar.
pub enum Source {
    Layers,
    Scalar,
}

/// A chart is at most 1,200 px wide: more buckets than pixel columns would draw nothing more,
/// so an image reads at most this many, whatever `points`/`columns` asked for.
pub const MAX_BUCKETS: u64 = 1200;

pub async fn image(
    state: &AppState,
    id: i64,
    name: &str,
    source: Source,
    window: Window,
    by: CellValue,
    format: Format,
) -> AppResult<Response> {
    let window = Window {
        buckets: window.buckets.min(MAX_BUCKETS),
        ..window
    };
    let store = &state.store;
    let run = store.run_row(id).await?;
    let title = format!("{name} · {} (run {id})", run.name);
    // Encoding is CPU work of tens of milliseconds: keep it off the async workers.
    let bytes = match source {
        Source::Layers => {
            let m = store.layer_matrix(&run, name, window).await?;
            let title = format!("{title} · {} per bucket", by.name());
            blocking(move || charts::heatmap(&m, &title, by, format)).await?
        }
        Source::Scalar => {
            let s = store.scalar_series(&run, name, window).await?;
            blocking(move || charts::scalar_chart(&s, &title, format)).await?
        }
    };
    let headers = [(header::CONTENT_TYPE, format.content_type())];
    Ok((headers, bytes).into_response())
}

/// Runs CPU-bound drawing and encoding on the blocking pool.
pub async fn blocking(
    f: impl FnOnce() -> anyhow::Result<Vec<u8>> + Send + 'static,
) -> AppResult<Vec<u8>> {
    let bytes = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok(bytes)
}
