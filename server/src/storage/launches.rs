//! Launch records: written by the launch queue as they change, read back at start-up.

use std::collections::BTreeMap;

use keel_protocol::LaunchRecord;
use sqlx::{SqliteConnection, SqliteExecutor};

use super::StoreResult;

/// A launch as stored: its record and the process ids of its running trainers by variant.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredLaunch {
    pub record: LaunchRecord,
    pub pids: BTreeMap<usize, u32>,
}

/// Every stored launch, oldest first; a row that does not read back is skipped (and logged).
pub async fn load(db: impl SqliteExecutor<'_>) -> StoreResult<Vec<StoredLaunch>> {
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

pub(super) async fn save(tx: &mut SqliteConnection, launch: &StoredLaunch) -> StoreResult<()> {
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
pub(super) async fn prune(tx: &mut SqliteConnection, before: f64) -> StoreResult<u64> {
    let done = sqlx::query("DELETE FROM launches WHERE NOT active AND updated_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use keel_protocol::{LaunchVariant, VariantState};

    fn launch(id: i64, state: VariantState) -> StoredLaunch {
        StoredLaunch {
            record: LaunchRecord {
                id,
                grid: "stability".into(),
                group: format!("stability-{id}"),
                steps: Some(10),
                issued_by: "token".into(),
                created_at: 1.0,
                cancelled: false,
                active: !state.is_final(),
                variants: vec![LaunchVariant {
                    name: "a".into(),
                    state,
                    run_id: Some(3),
                    started_at: Some(2.0),
                    ended_at: None,
                    exit: None,
                    stderr: vec![],
                    cancelled: false,
                    job: Some("17".into()),
                    node: Some("node-3".into()),
                    reason: None,
                    log: Some("/logs/stability-1-a-17.out".into()),
                }],
            },
            pids: BTreeMap::from([(0, 4242)]),
        }
    }

    #[tokio::test]
    async fn launches_read_back_as_saved_and_only_ended_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _changes) = Store::open(&dir.path().join("k.db")).await.unwrap();
        let (running, ended) = (
            launch(1, VariantState::Running),
            launch(2, VariantState::Finished),
        );
        for l in [running.clone(), ended.clone()] {
            store.save_launch(l).await.unwrap();
        }
        assert_eq!(
            store.launches().await.unwrap(),
            vec![running.clone(), ended]
        );
        // Pruning everything that ended before now keeps the running one.
        let gone = store
            .prune_launches(crate::storage::now() + 1.0)
            .await
            .unwrap();
        assert_eq!(gone, 1);
        assert_eq!(store.launches().await.unwrap(), vec![running]);
    }
}
