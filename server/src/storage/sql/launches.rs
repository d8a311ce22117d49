//! Launch records: written by the launch queue as they change, read back at start-up.

use sqlx::Executor;

use super::{Conn, Db, StoreResult};
pub use crate::storage::launches::StoredLaunch;

/// Every stored launch, oldest first; a row that does not read back is skipped (and logged).
pub async fn load(db: impl Executor<'_, Database = Db>) -> StoreResult<Vec<StoredLaunch>> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, record, pids FROM launches ORDER BY id")
            .fetch_all(db)
            .await?;
    let mut out = Vec::new();
    for (id, record, pids) in rows {
        match (serde_json::from_str(&record), serde_json::from_str(&pids)) {
            (Ok(record), Ok(pids)) => out.push(StoredLaunch { record, pids }),
            _ => tracing::warn!(launch = id, "a stored launch does not read back; skipped"),
        }
    }
    Ok(out)
}

pub async fn save(tx: &mut Conn, launch: &StoredLaunch) -> StoreResult<()> {
    let r = &launch.record;
    let active = r.variants.iter().any(|v| !v.state.is_final());
    sqlx::query(
        "INSERT INTO launches (id, record, pids, active, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET record = excluded.record, pids = excluded.pids,
         active = excluded.active, updated_at = excluded.updated_at",
    )
    .bind(r.id)
    .bind(serde_json::to_string(r).map_err(anyhow::Error::from)?)
    .bind(serde_json::to_string(&launch.pids).map_err(anyhow::Error::from)?)
    .bind(active)
    .bind(super::now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Forgets launches that ended before `before` (unix seconds); how many.
pub async fn prune(tx: &mut Conn, before: f64) -> StoreResult<u64> {
    let done = sqlx::query("DELETE FROM launches WHERE NOT active AND updated_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}
