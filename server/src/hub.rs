//! The live hub: fans committed changes out to subscribers, per run and for all runs.
//!
//! It only ever sees what the writer has committed (persist, then publish), in commit order,
//! each message tagged with the [`Cursor`] at that point so a subscriber that reconnects can
//! ask storage for exactly what it missed.
//!
//! Every message goes into one ring, bounded in bytes ([`BUDGET`]) rather than in messages:
//! a message of 10 steps × 178 values weighs thousands of times what a status change does,
//! and a ring of so many messages per run would let a stalled subscriber (a frozen tab)
//! pin hundreds of megabytes. Subscribers read the ring at their own pace, each from its own
//! position; past the budget the oldest messages go, and a subscriber that had not yet read
//! one of its own is told it lagged, and then resyncs, rather than slowing anyone down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use keel_protocol::LiveMessage;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, mpsc};

use crate::storage::{Change, Cursor};

/// Bytes of messages the ring keeps (estimated by [`weight`]): at 16 runs each sending
/// 100 steps/s of 178 values, the last few seconds.
pub const BUDGET: usize = 16 << 20;

/// A committed change as subscribers receive it.
#[derive(Debug)]
pub struct Published {
    pub run_id: i64,
    pub cursor: Cursor,
    pub message: LiveMessage,
}

/// About the memory a message holds.
fn weight(message: &LiveMessage) -> usize {
    match message {
        LiveMessage::Steps { steps, .. } => steps
            .iter()
            .map(|r| {
                let values = r.scalars.len() + r.layers.values().map(Vec::len).sum::<usize>();
                128 + 48 * (r.scalars.len() + r.layers.len()) + 8 * values
            })
            .sum::<usize>(),
        _ => 512,
    }
}

struct Ring {
    /// (position, message, weight), oldest first.
    messages: VecDeque<(u64, Arc<Published>, usize)>,
    /// The position the next message takes.
    next: u64,
    bytes: usize,
    /// Per run, the position of its newest message that has left the ring.
    gone: HashMap<i64, u64>,
    /// Past the budget, everything up to here has left the ring.
    gone_all: Option<u64>,
}

#[derive(Clone)]
pub struct Hub {
    ring: Arc<Mutex<Ring>>,
    notify: Arc<Notify>,
}

impl Hub {
    /// Starts the task that drains the writer's changes into the ring.
    pub fn spawn(mut changes: mpsc::UnboundedReceiver<Change>) -> Hub {
        let hub = Hub {
            ring: Arc::new(Mutex::new(Ring {
                messages: VecDeque::new(),
                next: 0,
                bytes: 0,
                gone: HashMap::new(),
                gone_all: None,
            })),
            notify: Arc::new(Notify::new()),
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
        let w = weight(&change.message);
        let published = Arc::new(Published {
            run_id: change.run_id,
            cursor: change.cursor,
            message: change.message,
        });
        let mut ring = self.ring.lock().expect("hub lock");
        let at = ring.next;
        ring.next += 1;
        ring.messages.push_back((at, published, w));
        ring.bytes += w;
        while ring.bytes > BUDGET && ring.messages.len() > 1 {
            let (pos, old, w) = ring.messages.pop_front().expect("not empty");
            ring.bytes -= w;
            ring.gone.insert(old.run_id, pos);
            ring.gone_all = Some(pos);
        }
        drop(ring);
        self.notify.notify_waiters();
    }

    fn subscription(&self, run: Option<i64>) -> Subscription {
        Subscription {
            hub: self.clone(),
            run,
            next: self.ring.lock().expect("hub lock").next,
        }
    }

    /// Changes of one run from now on.
    pub fn subscribe(&self, run_id: i64) -> Subscription {
        self.subscription(Some(run_id))
    }

    /// Changes of every run from now on (the runs page).
    pub fn subscribe_all(&self) -> Subscription {
        self.subscription(None)
    }
}

/// A subscriber's place in the ring.
pub struct Subscription {
    hub: Hub,
    /// Only this run's messages (None: every run's).
    run: Option<i64>,
    /// The position of the next message to look at.
    next: u64,
}

impl Subscription {
    /// The next message for this subscriber, waiting for one. `Lagged` when some of its
    /// messages left the ring before it read them; it then goes on from the oldest one kept.
    pub async fn recv(&mut self) -> Result<Arc<Published>, RecvError> {
        let notify = self.hub.notify.clone();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a message published in between still wakes us.
            notified.as_mut().enable();
            if let Some(found) = self.look() {
                return found;
            }
            notified.await;
        }
    }

    fn look(&mut self) -> Option<Result<Arc<Published>, RecvError>> {
        let ring = self.hub.ring.lock().expect("hub lock");
        let oldest = ring.messages.front().map_or(ring.next, |m| m.0);
        if self.next < oldest {
            let lost = match self.run {
                Some(run) => ring.gone.get(&run).is_some_and(|&g| g >= self.next),
                None => ring.gone_all.is_some_and(|g| g >= self.next),
            };
            let skipped = oldest - self.next;
            self.next = oldest;
            if lost {
                return Some(Err(RecvError::Lagged(skipped)));
            }
        }
        let start = (self.next - oldest) as usize;
        for (pos, message, _) in ring.messages.range(start..) {
            self.next = pos + 1;
            if self.run.is_none_or(|r| r == message.run_id) {
                return Some(Ok(message.clone()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::{RunStatus, StepRecord};

    fn change(run_id: i64, seq: i64, message: LiveMessage) -> Change {
        Change {
            run_id,
            cursor: Cursor { seq, event: 0 },
            message,
        }
    }

    fn steps(values: usize) -> LiveMessage {
        let mut r = StepRecord::at(0);
        r.layers.insert(
            "hidden_var".into(),
            vec![keel_protocol::Metric(1.0); values],
        );
        LiveMessage::Steps {
            branch: 0,
            steps: vec![r],
        }
    }

    fn status() -> LiveMessage {
        LiveMessage::Status {
            status: RunStatus::Paused,
            branch: 0,
        }
    }

    #[tokio::test]
    async fn subscribers_see_their_runs_messages_in_order() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let hub = Hub::spawn(rx);
        let mut one = hub.subscribe(1);
        let mut all = hub.subscribe_all();
        for (run, seq) in [(1, 1), (2, 1), (1, 2)] {
            hub.publish(change(run, seq, status()));
        }
        let got: Vec<i64> = vec![
            one.recv().await.unwrap().cursor.seq,
            one.recv().await.unwrap().cursor.seq,
        ];
        assert_eq!(got, vec![1, 2]);
        for want in [(1, 1), (2, 1), (1, 2)] {
            let m = all.recv().await.unwrap();
            assert_eq!((m.run_id, m.cursor.seq), want);
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_the_budget_lags_and_holds_nothing() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let hub = Hub::spawn(rx);
        let mut stalled = hub.subscribe(1);
        let mut other = hub.subscribe(2);
        hub.publish(change(2, 1, status()));
        // 100,000 values a message: about 800 KB; forty of them are twice the budget.
        for seq in 0..40 {
            hub.publish(change(1, seq, steps(100_000)));
        }
        assert!(hub.ring.lock().unwrap().bytes <= BUDGET);
        assert!(matches!(stalled.recv().await, Err(RecvError::Lagged(_))));
        // It goes on from the oldest message kept.
        assert!(stalled.recv().await.is_ok());
        // Run 2's only message was among those dropped: its subscriber lost it.
        assert!(matches!(other.recv().await, Err(RecvError::Lagged(_))));
    }

    #[tokio::test]
    async fn dropping_other_runs_messages_is_no_lag() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let hub = Hub::spawn(rx);
        let mut quiet = hub.subscribe(3);
        for seq in 0..40 {
            hub.publish(change(1, seq, steps(100_000)));
        }
        hub.publish(change(3, 1, status()));
        let m = quiet.recv().await.unwrap();
        assert_eq!((m.run_id, m.cursor.seq), (3, 1));
    }
}
