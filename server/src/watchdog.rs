//! Marks a running or paused run `lost` when its trainer has not been heard from for
//! `Config::lost_after`. Any later sign of life (an ingest, a command poll, a status report)
//! makes it `running` again; that part happens in the writer.
//!
//! It also raises `stalled`: a run that is `running`, whose trainer still answers (or has not
//! yet been silent long enough to be lost), but that has stored no step for
//! [`STALL_STEPS`] × its usual step time (its recent `step_time_s`), and at least
//! [`STALL_MIN`]: a hung data loader, a deadlock in a step. Once per stall: it re-arms when
//! the run steps again.

use std::collections::HashSet;
use std::time::Duration;

use keel_protocol::{RunStatus, Severity};

use crate::AppState;
use crate::storage::NewEvent;
use crate::storage::now;
use crate::storage::series::Window;

/// A run is stalled after this many usual step times without a step…
pub const STALL_STEPS: f64 = 20.0;
/// …and never sooner than this.
pub const STALL_MIN: Duration = Duration::from_secs(30);

pub fn spawn(state: AppState) {
    let shortest = state.config.lost_after.min(state.config.stall_min);
    let period = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::spawn(async move {
        // (run, last step) of every stall already told.
        let mut stalled: HashSet<(i64, Option<u64>)> = HashSet::new();
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = state.shutdown.cancelled() => return,
            }
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = ?e, "looking for lost runs failed");
            }
            if let Err(e) = stalls(&state, &mut stalled, state.config.stall_min).await {
                tracing::warn!(error = ?e, "looking for stalled runs failed");
            }
        }
    });
}

/// Raises `stalled` once for each (run, last step) that has waited too long for its next step.
async fn stalls(
    state: &AppState,
    told: &mut HashSet<(i64, Option<u64>)>,
    floor: Duration,
) -> anyhow::Result<()> {
    let store = &state.store;
    let now = now();
    for (id, last, at) in store.quiet_running_runs(now - floor.as_secs_f64()).await? {
        if told.contains(&(id, last)) {
            continue;
        }
        // The usual step time: the mean `step_time_s` of the last 50 steps, when reported.
        let usual = match last {
            Some(last) => {
                let run = store.run_row(id).await?;
                let window = Window {
                    from: Some(last.saturating_sub(49)),
                    to: Some(last),
                    buckets: 1,
                    branch: None,
                };
                store
                    .scalar_series(&run, "step_time_s", window)
                    .await
                    .ok()
                    .and_then(|s| s.mean.first().map(|m| m.get()))
                    .filter(|t| t.is_finite() && *t > 0.0)
            }
            None => None,
        };
        let wait = usual
            .map_or(0.0, |t| t * STALL_STEPS)
            .max(floor.as_secs_f64());
        let quiet = now - at;
        if quiet < wait {
            continue;
        }
        told.retain(|(run, _)| *run != id);
        told.insert((id, last));
        let after = last.map_or("its start".to_string(), |s| format!("step {s}"));
        let usual = usual.map_or(String::new(), |t| format!(" (its steps take {t:.2} s)"));
        let event = NewEvent {
            run_id: id,
            kind: "alert".into(),
            name: "stalled".into(),
            severity: Severity::Warning,
            step: last,
            message: format!("no step for {quiet:.0} s after {after}{usual}, while running"),
        };
        state.store.add_event(event).await?;
    }
    Ok(())
}

async fn sweep(state: &AppState) -> anyhow::Result<()> {
    let before = now() - state.config.lost_after.as_secs_f64();
    for id in state.store.silent_runs(before).await? {
        let silence = state.config.lost_after.as_secs();
        let message = Some(format!("no word from the trainer for {silence} s"));
        state.store.set_status(id, RunStatus::Lost, message).await?;
    }
    Ok(())
}
