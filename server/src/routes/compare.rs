//! The comparison of several runs, exported whole: `GET /api/v1/compare.png` and `.svg` (the
//! compare page's charts as one figure) and `/api/v1/compare.csv` (the compared scalar, one
//! column per run). Runs are picked as on the page, `runs=1,2,3` or `group=NAME`; the options
//! mirror the page's controls (`key`, `x`, `log`, `smooth`, `stat`, `step`), plus the figure's
//! `width` and `height`.
//!
//! Every series is read through the bucketed queries the page uses, one bucket per pixel
//! column of the plot that draws it, so a figure of runs a million steps long reads about as
//! much as one of a thousand. Drawing and encoding run off the async workers.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::try_join_all;
use serde::Deserialize;

use crate::AppState;
use crate::charts::compare::{self, CompareRun, Comparison, Layout, XAxis};
use crate::charts::{self, CellValue, Format};
use crate::error::{ApiQuery, AppError, AppResult};
use crate::routes::data::{MAX_BUCKETS, MAX_STEP};
use crate::routes::images::blocking;
use crate::routes::table::Routes;
use crate::storage::Store;
use crate::storage::runs::{RunRow, SeriesRow};
use crate::storage::series::Window;
use crate::views::compare::MAX_RUNS;
use crate::views::csv;
use crate::views::run::stat_order;

pub fn router() -> Routes {
    Routes::new()
        .get("/api/v1/compare.png", png)
        .get("/api/v1/compare.svg", svg)
        .get("/api/v1/compare.csv", table)
}

/// The ids of `runs=1,2,3`: a malformed list is a 400, never an empty comparison.
fn parse_ids(list: &str) -> AppResult<Vec<i64>> {
    let bad = || {
        AppError::BadRequest(format!(
            "`runs` must be run ids separated by commas, not `{list}`"
        ))
    };
    let mut ids: Vec<i64> = Vec::new();
    for part in list.split(',') {
        let id: i64 = part.trim().parse().map_err(|_| bad())?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The runs a comparison shows: the listed ids, or every run of the group in creation order;
/// at most [`MAX_RUNS`]. The compare page picks its runs here too.
pub async fn compare_ids(
    state: &AppState,
    runs: Option<&str>,
    group: Option<&str>,
) -> AppResult<Vec<i64>> {
    let ids = match (runs, group) {
        (Some(list), None) => parse_ids(list)?,
        (None, Some(group)) => {
            let ids = state.store.group_ids(group).await?;
            if ids.is_empty() {
                return Err(AppError::NotFound(format!("group {group} not found")));
            }
            ids
        }
        _ => {
            return Err(AppError::BadRequest(
                "give either `runs=1,2,3` or `group=NAME`".into(),
            ));
        }
    };
    if ids.len() > MAX_RUNS {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_RUNS} runs can be compared, not {}",
            ids.len()
        )));
    }
    Ok(ids)
}

/// A compared run: its row and the series it has.
struct Picked {
    row: RunRow,
    series: Vec<SeriesRow>,
}

impl Picked {
    fn has(&self, layer: bool, name: &str) -> bool {
        self.series
            .iter()
            .any(|s| s.layer == layer && s.name == name)
    }

    /// The legend label: the name, and the variant when there is one.
    fn label(&self) -> String {
        match self.row.variant.as_deref() {
            Some(v) if !v.is_empty() && v != self.row.name => format!("{} · {v}", self.row.name),
            _ => self.row.name.clone(),
        }
    }
}

/// The runs of the query with their series, in comparison order; an unknown run is a 404.
async fn pick(state: &AppState, runs: Option<&str>, group: Option<&str>) -> AppResult<Vec<Picked>> {
    let store = &state.store;
    let mut picked = Vec::new();
    for id in compare_ids(state, runs, group).await? {
        let row = store.run_row(id).await?;
        let series = store.series_of(id).await?;
        picked.push(Picked { row, series });
    }
    Ok(picked)
}

/// The scalar compared: `key` when given (a 404 when no run has it), else `loss`.
fn scalar_key(picked: &[Picked], key: Option<&str>) -> AppResult<String> {
    match key {
        None => Ok("loss".into()),
        Some(k) if picked.iter().any(|p| p.has(false, k)) => Ok(k.to_owned()),
        Some(k) => Err(AppError::NotFound(format!(
            "scalar `{k}` in none of the runs"
        ))),
    }
}

/// `?runs|group&key&x&log&smooth&stat&step&width&height`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FigureQuery {
    runs: Option<String>,
    group: Option<String>,
    key: Option<String>,
    x: Option<String>,
    log: Option<String>,
    smooth: Option<f64>,
    stat: Option<String>,
    step: Option<u64>,
    width: Option<u32>,
    height: Option<u32>,
    by: Option<String>,
}

/// The figure's drawing options, checked: values out of range are 422s.
struct Options {
    x: XAxis,
    by: CellValue,
    log_y: bool,
    smooth: f64,
    width: u32,
    height: Option<u32>,
}

impl FigureQuery {
    fn options(&self) -> AppResult<Options> {
        let invalid = |s: String| Err(AppError::Invalid(s));
        let x = match self.x.as_deref() {
            None | Some("steps") => XAxis::Steps,
            Some("tokens") => XAxis::Tokens,
            Some(other) => return invalid(format!("`x` is `steps` or `tokens`, not `{other}`")),
        };
        let log_y = match self.log.as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => return invalid(format!("`log` is 0 or 1, not `{other}`")),
        };
        let smooth = self.smooth.unwrap_or(0.6);
        if !(0.0..=0.99).contains(&smooth) {
            return invalid("`smooth` must be between 0 and 0.99".into());
        }
        let (w_min, w_max, w_default) = compare::WIDTH;
        let width = self.width.unwrap_or(w_default);
        if !(w_min..=w_max).contains(&width) {
            return invalid(format!("`width` must be {w_min} to {w_max} pixels"));
        }
        let (h_min, h_max) = compare::HEIGHT;
        if self.height.is_some_and(|h| !(h_min..=h_max).contains(&h)) {
            return invalid(format!("`height` must be {h_min} to {h_max} pixels"));
        }
        if self.step.is_some_and(|s| s > MAX_STEP) {
            return invalid(format!("steps go up to {MAX_STEP}"));
        }
        let by = CellValue::parse(self.by.as_deref()).map_err(AppError::Invalid)?;
        Ok(Options {
            x,
            by,
            log_y,
            smooth,
            width,
            height: self.height,
        })
    }

    /// The layer statistic: `stat` when given (a 404 when no run has it), else the first
    /// the runs have in the page's order; `None` when they have none.
    fn stat(&self, picked: &[Picked]) -> AppResult<Option<String>> {
        if let Some(stat) = &self.stat {
            if picked.iter().any(|p| p.has(true, stat)) {
                return Ok(Some(stat.clone()));
            }
            return Err(AppError::NotFound(format!(
                "layer statistic `{stat}` in none of the runs"
            )));
        }
        let mut stats: Vec<String> = Vec::new();
        for s in picked.iter().flat_map(|p| &p.series).filter(|s| s.layer) {
            if !stats.contains(&s.name) {
                stats.push(s.name.clone());
            }
        }
        Ok(stat_order(&stats).into_iter().next())
    }
}

async fn png(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FigureQuery>,
) -> AppResult<Response> {
    figure(&state, q, Format::Png).await
}

async fn svg(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FigureQuery>,
) -> AppResult<Response> {
    figure(&state, q, Format::Svg).await
}

async fn figure(state: &AppState, q: FigureQuery, format: Format) -> AppResult<Response> {
    let opts = q.options()?;
    let picked = pick(state, q.runs.as_deref(), q.group.as_deref()).await?;
    let key = scalar_key(&picked, q.key.as_deref())?;
    let stat = q.stat(&picked)?;
    let labels: Vec<String> = picked.iter().map(Picked::label).collect();
    let layout =
        Layout::new(opts.width, opts.height, &labels, stat.is_some()).map_err(AppError::Invalid)?;
    // The latest step every run has reached, unless one was asked for.
    let step = q
        .step
        .or_else(|| picked.iter().filter_map(|p| p.row.last_step).min());
    let plan = Plan {
        key: &key,
        stat: stat.as_deref(),
        step,
        x: opts.x,
        layout: &layout,
    };
    let store = &state.store;
    let parts = picked
        .iter()
        .enumerate()
        .map(|(i, p)| plan.read(store, p, i));
    let mut runs = try_join_all(parts).await?;
    for (run, label) in runs.iter_mut().zip(labels) {
        run.label = label;
    }
    let title = match &q.group {
        Some(g) => format!("Group {g}: {} runs compared", picked.len()),
        None => format!("{} runs compared", picked.len()),
    };
    let fig = Comparison {
        title,
        key,
        stat,
        step,
        x: opts.x,
        log_y: opts.log_y,
        smooth: opts.smooth,
        by: opts.by,
        runs,
        layout,
    };
    let bytes = blocking(move || charts::comparison(&fig, format)).await?;
    let headers = [(header::CONTENT_TYPE, format.content_type())];
    Ok((headers, bytes).into_response())
}

/// What to read of each run, at the resolution the layout draws it.
struct Plan<'a> {
    key: &'a str,
    stat: Option<&'a str>,
    step: Option<u64>,
    x: XAxis,
    layout: &'a Layout,
}

impl Plan<'_> {
    async fn read(&self, store: &Store, p: &Picked, index: usize) -> AppResult<CompareRun> {
        let row = &p.row;
        let whole = |buckets: u64| Window {
            from: None,
            to: None,
            buckets,
            branch: None,
        };
        let mut run = CompareRun::default();
        let points = whole(self.layout.loss.columns());
        if p.has(false, self.key) {
            run.loss = Some(store.scalar_series(row, self.key, points).await?);
        }
        if self.x == XAxis::Tokens && p.has(false, "tokens") {
            run.tokens = Some(store.scalar_series(row, "tokens", points).await?);
        }
        let (Some(stat), Some(panels)) = (self.stat, &self.layout.layers) else {
            return Ok(run);
        };
        if !p.has(true, stat) {
            return Ok(run);
        }
        let columns = whole(panels.cells[index].columns());
        run.heat = Some(store.layer_matrix(row, stat, columns).await?);
        // A run that has not got as far as the step shows its newest one.
        if let (Some(want), Some(last)) = (self.step, row.last_step) {
            let at = want.min(last);
            let one = Window {
                from: Some(at),
                to: Some(at),
                buckets: 1,
                branch: None,
            };
            let m = store.layer_matrix(row, stat, one).await?;
            if let (Some(step), Some(mean)) = (m.step.first(), m.mean.first()) {
                run.profile = Some((*step, mean.iter().map(|v| v.get()).collect()));
            }
        }
        Ok(run)
    }
}

/// `?runs|group&key&points`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableQuery {
    runs: Option<String>,
    group: Option<String>,
    key: Option<String>,
    points: Option<u64>,
}

/// The compared scalar as one CSV: every run read over the same steps in the same buckets,
/// so its rows line up; one column of bucket means per run.
async fn table(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<TableQuery>,
) -> AppResult<Response> {
    let buckets = q.points.unwrap_or(2000);
    if !(1..=MAX_BUCKETS).contains(&buckets) {
        return Err(AppError::BadRequest(format!(
            "`points` must be between 1 and {MAX_BUCKETS}"
        )));
    }
    let picked = pick(&state, q.runs.as_deref(), q.group.as_deref()).await?;
    let key = scalar_key(&picked, q.key.as_deref())?;
    let to = picked.iter().filter_map(|p| p.row.last_step).max();
    let store = &state.store;
    let mut columns = Vec::new();
    for p in &picked {
        let column = match to {
            Some(to) if p.has(false, &key) => {
                let window = Window {
                    from: Some(0),
                    to: Some(to),
                    buckets,
                    branch: None,
                };
                Some(store.scalar_series(&p.row, &key, window).await?)
            }
            _ => None,
        };
        columns.push(column);
    }
    // A name two runs share is told apart by the run ids.
    let names: Vec<String> = picked
        .iter()
        .map(|p| {
            let twice = picked.iter().filter(|o| o.row.name == p.row.name).count() > 1;
            match twice {
                true => format!("{} (run {})", p.row.name, p.row.id),
                false => p.row.name.clone(),
            }
        })
        .collect();
    let headers = [(header::CONTENT_TYPE, "text/csv; charset=utf-8")];
    Ok((headers, csv::compared(&names, &columns)).into_response())
}
