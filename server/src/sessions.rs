//! Signed-in browser sessions: an in-memory map from a random session id to its CSRF token and
//! expiry.
//!
//! A session is made by `POST /login` with the operator token and lives in memory only: a
//! server restart signs every browser out, which is the safe direction. The map holds no
//! operator token, only ids that are worthless once expired; expired entries are dropped
//! whenever a session is opened, so the map cannot grow without bound. This module checks
//! nothing about requests — `auth` does that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{Caller, new_token};

/// The name of the session cookie.
pub const COOKIE: &str = "keel_session";

/// The live sessions, shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct Sessions {
    ttl: Duration,
    map: Arc<Mutex<HashMap<String, Session>>>,
}

#[derive(Clone, Debug)]
struct Session {
    csrf: String,
    caller: Caller,
    expires: Instant,
}

/// What a session id turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Signed in; the session's CSRF token and who signed in.
    Valid {
        csrf: String,
        caller: Caller,
    },
    Expired,
    Unknown,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: Arc::default(),
        }
    }

    /// How long a session lasts from sign-in.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session of `caller`: its id and its CSRF token.
    pub fn open(&self, caller: Caller) -> anyhow::Result<(String, String)> {
        let (id, csrf) = (new_token()?, new_token()?);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        let expires = now + self.ttl;
        let session = Session {
            csrf: csrf.clone(),
            caller,
            expires,
        };
        map.insert(id.clone(), session);
        Ok((id, csrf))
    }

    pub fn lookup(&self, id: &str) -> Lookup {
        let mut map = self.lock();
        match map.get(id) {
            None => Lookup::Unknown,
            Some(s) if s.expires <= Instant::now() => {
                map.remove(id);
                Lookup::Expired
            }
            Some(s) => Lookup::Valid {
                csrf: s.csrf.clone(),
                caller: s.caller.clone(),
            },
        }
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation is a single insert, remove or retain), so a poisoned lock is usable.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Caller {
        Caller {
            by: "alice".into(),
            role: keel_protocol::Role::Viewer,
        }
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_then_gone() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let (id, csrf) = sessions.open(alice()).unwrap();
        assert_eq!(
            sessions.lookup(&id),
            Lookup::Valid {
                csrf,
                caller: alice()
            }
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(sessions.lookup(&id), Lookup::Expired);
        assert_eq!(sessions.lookup(&id), Lookup::Unknown);
    }

    #[test]
    fn a_closed_session_is_unknown() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, _) = sessions.open(alice()).unwrap();
        sessions.close(&id);
        assert_eq!(sessions.lookup(&id), Lookup::Unknown);
    }
}
