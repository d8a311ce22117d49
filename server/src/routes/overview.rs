//! `GET /api/v1/live`: Server-Sent Events about every run, for the runs page.
//!
//! It carries summaries, not data: per run, the newest step, its loss and token count, at
//! most every [`FLUSH`] however fast runs ingest, so one busy run cannot flood a page that
//! shows a hundred. Status changes and alerts go out at once, and so does every change of a
//! launched grid (`launch`, the whole launch record). There is no resuming: a client that
//! reconnects gets `hello` again and rereads the table and the launches, which are the current
//! state. The stream ends when the server shuts down.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use keel_protocol::{LaunchRecord, LiveMessage, Metric};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Interval, MissedTickBehavior};

use crate::AppState;
use crate::hub::{Published, Subscription};
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new().get("/api/v1/live", live_all)
}

/// Step summaries of one run go out at most this often.
const FLUSH: Duration = Duration::from_millis(250);

/// The newest step of a run, as the runs table shows it.
#[derive(Clone, Debug, Serialize)]
struct RunStep {
    id: i64,
    branch: u32,
    last_step: u64,
    loss: Option<Metric>,
    tokens: Option<u64>,
}

async fn live_all(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let launches = state.launches.as_ref().map(|l| l.subscribe());
    let feed = Feed::new(state.hub.subscribe_all(), launches);
    let hello = Event::default().event("hello").data("{}");
    let updates = stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((event, feed))
    });
    let stream = stream::iter([hello])
        .chain(updates)
        .map(Ok)
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Hub messages in, throttled summaries out.
struct Feed {
    rx: Subscription,
    /// Launch changes, when the server launches trainers.
    launches: Option<broadcast::Receiver<Arc<LaunchRecord>>>,
    pending: BTreeMap<i64, RunStep>,
    /// The newest branch seen per run: late re-sends to an older branch do not move a run.
    branches: HashMap<i64, u32>,
    tick: Interval,
}

impl Feed {
    fn new(rx: Subscription, launches: Option<broadcast::Receiver<Arc<LaunchRecord>>>) -> Feed {
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Feed {
            rx,
            launches,
            pending: BTreeMap::new(),
            branches: HashMap::new(),
            tick,
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(p) => {
                        if let Some(e) = self.take(&p) {
                            return Some(e);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.pending.clear();
                        return Some(named("resync", json!({"type": "resync"})));
                    }
                    Err(RecvError::Closed) => return None,
                },
                launch = next_launch(&mut self.launches) => match launch {
                    Ok(l) => return Some(named("launch", json!({"type": "launch", "launch": l}))),
                    Err(RecvError::Lagged(_)) => return Some(named("resync", json!({"type": "resync"}))),
                    Err(RecvError::Closed) => self.launches = None,
                },
                // Only ticks while something waits, so a quiet stream costs nothing.
                _ = self.tick.tick(), if !self.pending.is_empty() => return Some(self.flush()),
            }
        }
    }

    /// Folds a hub message in; status changes and alerts come back to be sent at once.
    fn take(&mut self, p: &Published) -> Option<Event> {
        match &p.message {
            LiveMessage::Steps { branch, steps } => {
                let newest = self.branches.entry(p.run_id).or_insert(*branch);
                if *branch < *newest {
                    return None;
                }
                *newest = *branch;
                let last = steps.iter().max_by_key(|s| s.step)?;
                let entry = RunStep {
                    id: p.run_id,
                    branch: *branch,
                    last_step: last.step,
                    loss: last.scalars.get("loss").copied(),
                    tokens: last.tokens,
                };
                self.pending.insert(p.run_id, entry);
                None
            }
            LiveMessage::Status { status, branch } => {
                self.branches.insert(p.run_id, *branch);
                let data =
                    json!({"type": "status", "id": p.run_id, "status": status, "branch": branch});
                Some(named("status", data))
            }
            LiveMessage::Event { event } if event.kind == "alert" => {
                Some(named("alert", json!({"type": "alert", "event": event})))
            }
            _ => None,
        }
    }

    fn flush(&mut self) -> Event {
        let runs: Vec<RunStep> = std::mem::take(&mut self.pending).into_values().collect();
        named("runs", json!({"type": "runs", "runs": runs}))
    }
}

/// The next launch change; never, without launches.
async fn next_launch(
    rx: &mut Option<broadcast::Receiver<Arc<LaunchRecord>>>,
) -> Result<Arc<LaunchRecord>, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn named(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}
