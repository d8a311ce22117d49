//! Launch records: written by the launch queue as they change, read back at start-up.

use std::collections::BTreeMap;

use keel_protocol::LaunchRecord;
use serde::{Deserialize, Serialize};

/// A launch as stored: its record and the process ids of its running trainers by variant.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredLaunch {
    pub record: LaunchRecord,
    pub pids: BTreeMap<usize, u32>,
    /// The server running it (`--replica`): on a database several servers share, each
    /// resumes its own launches only and shows the others'.
    pub owner: String,
}

/// What a server hears of the launches of the other servers on its database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchNews {
    /// Launch `id`'s record was written.
    Changed(i64),
    /// Some news may have been missed (a lost connection, a slow reader): read them all.
    Missed,
    /// A server asks the one named in it to cancel one of its launches.
    Cancel(CancelAsk),
}

/// One server asking another to cancel a launch it runs, or one variant of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAsk {
    /// The server asked (its `--replica` name).
    pub to: String,
    pub launch: i64,
    pub variant: Option<String>,
    /// Who asks, and which of their questions this is: where the answer goes.
    pub(super) from: u64,
    pub(super) ask: u64,
}

/// How long a server waits for the answer to a [`CancelAsk`], in seconds.
pub const ASK_TIMEOUT_S: u32 = 5;

/// The answer to a [`CancelAsk`]: done, or refused with an HTTP status and why.
pub type CancelAnswer = Result<(), (u16, String)>;

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
            owner: "keel-1:8080".into(),
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
