//! `GET /api/v1/runs/{id}/live`: Server-Sent Events of one run.
//!
//! The stream subscribes to the hub *before* reading what it must backfill, so nothing falls
//! in between; it then skips hub messages it already sent from storage. The first event,
//! `hello`, carries the current cursor as its id, so even a client that has received nothing
//! else resumes exactly with `Last-Event-ID`. The stream ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use keel_protocol::LiveMessage;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::error::{ApiPath, AppResult};
use crate::hub::Published;
use crate::storage::{Cursor, runs};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/runs/{id}/live", get(live))
}

/// A reconnect that missed more steps than this gets `resync` instead of the steps.
const MAX_BACKFILL: i64 = 2000;

fn event(cursor: Cursor, message: &LiveMessage) -> Event {
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
        .id(cursor.to_string())
        .data(data)
}

async fn current(state: &AppState, run_id: i64) -> AppResult<Cursor> {
    let (seq, event): (i64, i64) = sqlx::query_as(
        "SELECT seq, (SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = ?) FROM runs WHERE id = ?",
    )
    .bind(run_id)
    .bind(run_id)
    .fetch_one(state.store.reader())
    .await
    .map_err(crate::storage::StoreError::from)?;
    Ok(Cursor { seq, event })
}

/// What a client resuming from `from` missed, as SSE events, and where that leaves it.
async fn backfill(state: &AppState, run_id: i64, from: Cursor) -> AppResult<(Vec<Event>, Cursor)> {
    let db = state.store.reader();
    let mut out = Vec::new();
    let mut at = from;
    let steps = runs::steps_since(db, run_id, from.seq, MAX_BACKFILL + 1).await?;
    if steps.len() as i64 > MAX_BACKFILL {
        at.seq = current(state, run_id).await?.seq;
        out.push(event(at, &LiveMessage::Resync));
    } else {
        for (branch, seq, record) in steps {
            at.seq = seq;
            let message = LiveMessage::Steps {
                branch,
                steps: vec![record],
            };
            out.push(event(at, &message));
        }
    }
    for e in runs::events(db, run_id, from.event, 10_000).await? {
        at.event = e.id;
        out.push(event(at, &LiveMessage::Event { event: e }));
    }
    Ok((out, at))
}

async fn live(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    runs::run_row(state.store.reader(), id).await?;
    let rx = state.hub.subscribe(id);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse);
    let (first, sent) = match resume {
        Some(from) => backfill(&state, id, from).await?,
        None => {
            let now = current(&state, id).await?;
            let hello = Event::default()
                .event("hello")
                .id(now.to_string())
                .data("{}");
            (vec![hello], now)
        }
    };
    let updates = stream::unfold((rx, sent), |(mut rx, mut sent)| async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if let Some(e) = fresh(&p, &mut sent) {
                        return Some((e, (rx, sent)));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    return Some((event(sent, &LiveMessage::Resync), (rx, sent)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let stream = stream::iter(first)
        .chain(updates)
        .map(Ok)
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The SSE event for a hub message, unless the client already has it from the backfill.
/// Only steps move the step cursor and only events move the event cursor: a status or
/// command message shares its cursor with the steps or audit event committed beside it.
fn fresh(p: &Arc<Published>, sent: &mut Cursor) -> Option<Event> {
    match &p.message {
        LiveMessage::Steps { .. } if p.cursor.seq <= sent.seq => return None,
        LiveMessage::Steps { .. } => sent.seq = p.cursor.seq,
        LiveMessage::Event { .. } if p.cursor.event <= sent.event => return None,
        LiveMessage::Event { .. } => sent.event = p.cursor.event,
        // Its audit event (same id) is sent first; anything older came with the backfill.
        LiveMessage::Command { .. } if p.cursor.event < sent.event => return None,
        LiveMessage::Command { .. } | LiveMessage::Status { .. } | LiveMessage::Resync => {}
    }
    Some(event(*sent, &p.message))
}
