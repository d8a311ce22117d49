//! `GET /api/v1/runs/{id}/live`: Server-Sent Events of one run.
//!
//! The stream subscribes to the hub *before* reading what it must backfill, so nothing falls
//! in between; it then skips hub messages it already sent from storage. The first event,
//! `hello`, carries the current cursor as its id, so even a client that has received nothing
//! else resumes exactly with `Last-Event-ID`. The stream ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use keel_protocol::LiveMessage;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::error::{ApiPath, ApiQuery, AppError, AppResult};
use crate::hub::Published;
use crate::routes::table::Routes;
use crate::storage::Cursor;

pub fn router() -> Routes {
    Routes::new()
        .get("/api/v1/runs/{id}/live", live)
        .get("/api/v1/live/runs", live_runs)
}

/// Most runs one multiplexed stream follows.
pub const MAX_STREAM_RUNS: usize = 64;

/// A reconnect that missed more steps than this gets `resync` instead of the steps.
const MAX_BACKFILL: i64 = 2000;

/// An SSE event id: the cursor, prefixed with the run on a multiplexed stream (`3:12-4`).
fn id_of(tag: Option<i64>, cursor: Cursor) -> String {
    match tag {
        Some(run) => format!("{run}:{cursor}"),
        None => cursor.to_string(),
    }
}

fn event(tag: Option<i64>, cursor: Cursor, message: &LiveMessage) -> Event {
    let name = match message {
        LiveMessage::Steps { .. } => "steps",
        LiveMessage::Event { .. } => "event",
        LiveMessage::Command { .. } => "command",
        LiveMessage::Status { .. } => "status",
        LiveMessage::Resync => "resync",
    };
    let data = serde_json::to_string(message).unwrap_or_else(|_| "{}".into());
    Event::default()
        .event(name)
        .id(id_of(tag, cursor))
        .data(data)
}

async fn current(state: &AppState, run_id: i64) -> AppResult<Cursor> {
    Ok(state.store.cursor(run_id).await?)
}

/// What a client resuming from `from` missed, as SSE events, and where that leaves it.
async fn backfill(
    state: &AppState,
    run_id: i64,
    from: Cursor,
    tag: Option<i64>,
) -> AppResult<(Vec<Event>, Cursor)> {
    let store = &state.store;
    let mut out = Vec::new();
    let mut at = from;
    let steps = store
        .steps_since(run_id, from.seq, MAX_BACKFILL + 1)
        .await?;
    if steps.len() as i64 > MAX_BACKFILL {
        at.seq = current(state, run_id).await?.seq;
        out.push(event(tag, at, &LiveMessage::Resync));
    } else {
        for (branch, seq, record) in steps {
            at.seq = seq;
            let message = LiveMessage::Steps {
                branch,
                steps: vec![record],
            };
            out.push(event(tag, at, &message));
        }
    }
    for e in store.events(run_id, from.event, 10_000).await? {
        at.event = e.id;
        out.push(event(tag, at, &LiveMessage::Event { event: e }));
    }
    Ok((out, at))
}

async fn live(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.store.run_row(id).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse);
    let events = run_events(&state, id, resume, None).await?;
    let stream = events
        .map(Ok)
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `?runs=1,2:12-4,…`: the runs to follow, each with the cursor to resume it from, if any.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    runs: String,
}

fn parse_runs(list: &str) -> AppResult<Vec<(i64, Option<Cursor>)>> {
    let bad = |what: &str| {
        AppError::BadRequest(format!(
            "`runs` is a comma-separated list of run ids, each optionally with `:<cursor>` \
             (as in `1,2:12-4`): {what}"
        ))
    };
    let mut out: Vec<(i64, Option<Cursor>)> = Vec::new();
    for item in list.split(',') {
        let (id, cursor) = match item.split_once(':') {
            Some((id, c)) => (
                id,
                Some(Cursor::parse(c).ok_or_else(|| bad(&format!("bad cursor `{c}`")))?),
            ),
            None => (item, None),
        };
        let id: i64 = id
            .trim()
            .parse()
            .map_err(|_| bad(&format!("`{id}` is not a run id")))?;
        if out.iter().any(|(seen, _)| *seen == id) {
            return Err(bad(&format!("run {id} is listed twice")));
        }
        out.push((id, cursor));
    }
    if out.len() > MAX_STREAM_RUNS {
        return Err(bad(&format!(
            "at most {MAX_STREAM_RUNS} runs, not {}",
            out.len()
        )));
    }
    Ok(out)
}

/// One stream for several runs: what each run's own stream would send, with event ids
/// `<run>:<cursor>`. A browser's tabs share it (through `static/live-worker.js`), so that
/// any number of open run pages hold one connection, not one each.
async fn live_runs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let wanted = parse_runs(&q.runs)?;
    let mut streams = Vec::new();
    for (id, resume) in wanted {
        state.store.run_row(id).await?;
        streams.push(run_events(&state, id, resume, Some(id)).await?.boxed());
    }
    let stream = stream::select_all(streams)
        .map(Ok)
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The events of one run from `resume` (a backfill of what it missed) or from now (`hello`),
/// then as they are committed; `tag` names the run in the event ids of a multiplexed stream.
async fn run_events(
    state: &AppState,
    id: i64,
    resume: Option<Cursor>,
    tag: Option<i64>,
) -> AppResult<impl Stream<Item = Event> + Send + use<>> {
    let rx = state.hub.subscribe(id);
    let (first, sent) = match resume {
        Some(from) => backfill(state, id, from, tag).await?,
        None => {
            let now = current(state, id).await?;
            let hello = Event::default()
                .event("hello")
                .id(id_of(tag, now))
                .data("{}");
            (vec![hello], now)
        }
    };
    let updates = stream::unfold((rx, sent), move |(mut rx, mut sent)| async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if let Some(e) = fresh(&p, &mut sent, tag) {
                        return Some((e, (rx, sent)));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    return Some((event(tag, sent, &LiveMessage::Resync), (rx, sent)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(stream::iter(first).chain(updates))
}

/// The SSE event for a hub message, unless the client already has it from the backfill.
/// Only steps move the step cursor and only events move the event cursor: a status or
/// command message shares its cursor with the steps or audit event committed beside it.
fn fresh(p: &Arc<Published>, sent: &mut Cursor, tag: Option<i64>) -> Option<Event> {
    match &p.message {
        LiveMessage::Steps { .. } if p.cursor.seq <= sent.seq => return None,
        LiveMessage::Steps { .. } => sent.seq = p.cursor.seq,
        LiveMessage::Event { .. } if p.cursor.event <= sent.event => return None,
        LiveMessage::Event { .. } => sent.event = p.cursor.event,
        // Its audit event (same id) is sent first; anything older came with the backfill.
        LiveMessage::Command { .. } if p.cursor.event < sent.event => return None,
        LiveMessage::Command { .. } | LiveMessage::Status { .. } | LiveMessage::Resync => {}
    }
    Some(event(tag, *sent, &p.message))
}
