//! The live hub: fans committed changes out to subscribers, per run and for all runs.
//!
//! It only ever sees what the writer has committed (persist, then publish), in commit order,
//! each message tagged with the [`Cursor`] at that point so a subscriber that reconnects can
//! ask storage for exactly what it missed. Channels are bounded: a subscriber that falls too
//! far behind is told to resync rather than slowing anyone else down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keel_protocol::LiveMessage;
use tokio::sync::{broadcast, mpsc};

use crate::storage::{Change, Cursor};

const RUN_CAPACITY: usize = 1024;
const ALL_CAPACITY: usize = 4096;

/// A committed change as subscribers receive it.
#[derive(Debug)]
pub struct Published {
    pub run_id: i64,
    pub cursor: Cursor,
    pub message: LiveMessage,
}

#[derive(Clone)]
pub struct Hub {
    runs: Arc<Mutex<HashMap<i64, broadcast::Sender<Arc<Published>>>>>,
    all: broadcast::Sender<Arc<Published>>,
}

impl Hub {
    /// Starts the task that drains the writer's changes into the channels.
    pub fn spawn(mut changes: mpsc::UnboundedReceiver<Change>) -> Hub {
        let hub = Hub {
            runs: Arc::default(),
            all: broadcast::channel(ALL_CAPACITY).0,
        };
        let publisher = hub.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                publisher.publish(change);
            }
        });
        hub
    }

    fn publish(&self, change: Change) {
        let published = Arc::new(Published {
            run_id: change.run_id,
            cursor: change.cursor,
            message: change.message,
        });
        let mut runs = self.runs.lock().expect("hub lock");
        if let Some(tx) = runs.get(&change.run_id) {
            // An error only means nobody listens any more: forget the channel.
            if tx.send(published.clone()).is_err() {
                runs.remove(&change.run_id);
            }
        }
        drop(runs);
        let _ = self.all.send(published);
    }

    /// Changes of one run from now on.
    pub fn subscribe(&self, run_id: i64) -> broadcast::Receiver<Arc<Published>> {
        let mut runs = self.runs.lock().expect("hub lock");
        runs.entry(run_id)
            .or_insert_with(|| broadcast::channel(RUN_CAPACITY).0)
            .subscribe()
    }

    /// Changes of every run from now on (the runs page).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Published>> {
        self.all.subscribe()
    }
}
