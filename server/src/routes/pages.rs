//! The HTML pages: `/` (runs, and the launch panel), `/runs/table` (the runs table alone, which the runs page
//! refetches after a reconnect), `/runs/{id}` (one run, with controls when signed in) and
//! `/compare?runs=1,2,3` or `/compare?group=NAME` (runs side by side).
//!
//! Handlers read storage and hand protocol values to `views`; they do no formatting. A page
//! that cannot be shown answers an HTML page with the status and reason, never JSON.

use askama::Template;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;
use crate::error::{AppError, AppResult};
use crate::routes::compare::compare_ids;
use crate::routes::table::Routes;
use crate::storage::now;
use crate::storage::series::Window;
use crate::views::compare::FinalLoss;
use crate::views::{ComparePage, LaunchPanel, RunPage, RunsPage, RunsTablePartial};

pub fn router() -> Routes {
    Routes::new()
        .get("/", runs_page)
        .get("/runs/table", runs_table)
        .get("/runs/{id}", run_page)
        .get("/compare", compare_page)
}

/// An [`AppError`] shown as a page.
pub struct PageError(AppError);

impl<E: Into<AppError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

#[derive(Template)]
#[template(path = "pages/error.html")]
struct ErrorPage {
    status: u16,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self.0 {
            tracing::error!(error = ?e, "page failed");
        }
        let status = self.0.status();
        let page = ErrorPage {
            status: status.as_u16(),
            message: self.0.public_message(),
        };
        match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}

type PageResult = Result<Html<String>, PageError>;

fn html(page: &impl Template) -> PageResult {
    let body = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok(Html(body))
}

/// Runs one page of the runs table shows; older ones are a link away.
pub const RUNS_PER_PAGE: u32 = 500;

/// `/?before=ID`: the page of runs older than run `ID`.
#[derive(serde::Deserialize)]
struct RunsQuery {
    before: Option<i64>,
}

fn runs_query(
    query: Result<axum::extract::Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Option<i64>, PageError> {
    let axum::extract::Query(q) = query.map_err(|r| AppError::BadRequest(r.body_text()))?;
    Ok(q.before)
}

async fn table(state: &AppState, before: Option<i64>) -> AppResult<RunsTablePartial> {
    let store = &state.store;
    let mut rows = store.list_runs(before, RUNS_PER_PAGE + 1).await?;
    let older = (rows.len() > RUNS_PER_PAGE as usize).then(|| rows[RUNS_PER_PAGE as usize - 1].id);
    rows.truncate(RUNS_PER_PAGE as usize);
    let summaries: Vec<_> = rows.iter().map(|r| r.summary()).collect();
    let total = store.count_runs().await?;
    Ok(RunsTablePartial::new(&summaries, now()).paged(before, older, total))
}

async fn runs_page(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let table = table(&state, runs_query(query)?).await?;
    let session = crate::auth::signed_in(&headers, &state).await?;
    let csrf = session
        .as_ref()
        .and_then(|s| s.csrf_for(keel_protocol::Role::Admin));
    let who = session
        .as_ref()
        .filter(|_| csrf.is_none())
        .map(|s| s.caller.describe());
    let launch = state.launches.as_ref().map(|l| LaunchPanel {
        csrf,
        who,
        max_trainers: l.config().max_trainers.max(1),
        slurm: match &l.config().engine {
            crate::launches::Engine::Local => None,
            crate::launches::Engine::Slurm(s) => Some(s.options.describe()),
        },
        grids: l.config().launcher.source(),
    });
    let notices = state.config.notices.list();
    html(&RunsPage {
        table,
        launch,
        notices,
    })
}

async fn runs_table(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    html(&table(&state, runs_query(query)?).await?)
}

async fn run_page(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> PageResult {
    // A page URL with a bad id is a missing page, not a malformed API call.
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::NotFound(format!("run {id} not found")))?;
    let detail = state.store.run_detail(id).await?;
    // Only a signed-in page carries the CSRF token, and with it the controls.
    let session = crate::auth::signed_in(&headers, &state).await?;
    html(&RunPage::new(&detail, now()).signed_in(session))
}

#[derive(serde::Deserialize)]
struct CompareQuery {
    runs: Option<String>,
    group: Option<String>,
}

async fn compare_page(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<CompareQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let axum::extract::Query(q) = query.map_err(|r| AppError::BadRequest(r.body_text()))?;
    let mut details = Vec::new();
    let mut finals = Vec::new();
    // Sequential reads: at most twenty small ones, and a missing run stops at once (404).
    for id in compare_ids(&state, q.runs.as_deref(), q.group.as_deref()).await? {
        let detail = state.store.run_detail(id).await?;
        finals.push(final_loss(&state, &detail).await?);
        details.push(detail);
    }
    let page = ComparePage::new(&details, q.group.as_deref(), now());
    html(&page.with_final_losses(&details, &finals))
}

/// What a run is judged by when runs are ranked: its last validation loss (`val/loss`) where
/// it reports one, else the mean training loss over its last tenth (one step's loss is too
/// noisy to rank by). `None` before any step, or when that value is not finite.
async fn final_loss(
    state: &AppState,
    detail: &keel_protocol::RunDetail,
) -> AppResult<Option<(f64, FinalLoss)>> {
    let store = &state.store;
    use keel_protocol::names::{LOSS, VAL_LOSS};
    let (key, kind) = if detail.scalars.iter().any(|s| s == VAL_LOSS) {
        (VAL_LOSS, FinalLoss::Validation)
    } else if detail.scalars.iter().any(|s| s == LOSS) {
        (LOSS, FinalLoss::TrainingTail)
    } else {
        return Ok(None);
    };
    let row = store.run_row(detail.summary.id).await?;
    let window = Window {
        from: None,
        to: None,
        buckets: 10,
        branch: None,
    };
    let s = store.scalar_series(&row, key, window).await?;
    let value = match kind {
        FinalLoss::Validation => s.last.last(),
        FinalLoss::TrainingTail => s.mean.last(),
    };
    Ok(value
        .map(|m| m.get())
        .filter(|v| v.is_finite())
        .map(|v| (v, kind)))
}
