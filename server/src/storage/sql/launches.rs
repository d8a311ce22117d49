//! Launch records: written by the launch queue as they change, read back at start-up.

use sqlx::Executor;

use super::{Conn, Db, StoreResult};
pub use crate::storage::launches::StoredLaunch;

/// A launch's id taken before its record is written (the empty record a reserved row holds).
const RESERVED: &str = "{}";

/// Every stored launch, oldest first; a row that does not read back is skipped (and logged).
pub async fn load(db: impl Executor<'_, Database = Db>) -> StoreResult<Vec<StoredLaunch>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, record, pids, owner FROM launches WHERE record <> $1 ORDER BY id",
    )
    .bind(RESERVED)
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for (id, record, pids, owner) in rows {
        match (serde_json::from_str(&record), serde_json::from_str(&pids)) {
            (Ok(record), Ok(pids)) => out.push(StoredLaunch {
                record,
                pids,
                owner,
            }),
            _ => tracing::warn!(launch = id, "a stored launch does not read back; skipped"),
        }
    }
    Ok(out)
}

/// The next launch id of the database, taken for `owner` (the writer's turn makes it unique
/// among every server on the database).
pub async fn reserve(tx: &mut Conn, owner: &str) -> StoreResult<i64> {
    let id = sqlx::query_scalar(
        "INSERT INTO launches (id, record, pids, active, updated_at, owner)
         SELECT COALESCE(MAX(id), 0) + 1, $1, '{}', TRUE, $2, $3 FROM launches RETURNING id",
    )
    .bind(RESERVED)
    .bind(super::now())
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    Ok(id)
}

pub async fn save(tx: &mut Conn, launch: &StoredLaunch) -> StoreResult<()> {
    let r = &launch.record;
    let active = r.variants.iter().any(|v| !v.state.is_final());
    sqlx::query(
        "INSERT INTO launches (id, record, pids, active, updated_at, owner) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET record = excluded.record, pids = excluded.pids,
         active = excluded.active, updated_at = excluded.updated_at, owner = excluded.owner",
    )
    .bind(r.id)
    .bind(serde_json::to_string(r).map_err(anyhow::Error::from)?)
    .bind(serde_json::to_string(&launch.pids).map_err(anyhow::Error::from)?)
    .bind(active)
    .bind(super::now())
    .bind(&launch.owner)
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
