//! Notices for the operator that belong to no run, shown at the top of the runs page: what
//! the process that started the server has to say about itself (`keel demo`: its trainer did
//! not start, and why). Held in memory; a restarted server starts with none.

use std::sync::{Arc, Mutex};

/// Shared by the server and whoever started it: cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notices(Arc<Mutex<Vec<String>>>);

/// Notices kept at most; the oldest go first.
const MAX: usize = 20;

impl Notices {
    pub fn push(&self, text: impl Into<String>) {
        let mut all = self.0.lock().expect("notices lock");
        if all.len() == MAX {
            all.remove(0);
        }
        all.push(text.into());
    }

    /// Every notice, oldest first.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().expect("notices lock").clone()
    }
}
