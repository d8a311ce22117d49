//! Marks a running or paused run `lost` when its trainer has not been heard from for
//! `Config::lost_after`. Any later sign of life (an ingest, a command poll, a status report)
//! makes it `running` again; that part happens in the writer.

use std::time::Duration;

use keel_protocol::RunStatus;

use crate::AppState;
use crate::storage::{WriteOp, now, runs};

pub fn spawn(state: AppState) {
    let period =
        (state.config.lost_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = state.shutdown.cancelled() => return,
            }
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = ?e, "looking for lost runs failed");
            }
        }
    });
}

async fn sweep(state: &AppState) -> anyhow::Result<()> {
    let before = now() - state.config.lost_after.as_secs_f64();
    for id in runs::silent_runs(state.store.reader(), before).await? {
        let silence = state.config.lost_after.as_secs();
        let message = Some(format!("no word from the trainer for {silence} s"));
        state
            .store
            .write(|reply| WriteOp::SetStatus(id, RunStatus::Lost, message, reply))
            .await?;
    }
    Ok(())
}
