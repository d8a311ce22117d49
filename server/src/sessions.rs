//! Signed-in browser sessions: a random session id (the cookie) that stands for who signed
//! in, with its CSRF token and expiry.
//!
//! A session is made by `POST /login` with a token and kept in the database (by the hash of
//! its id, see `storage::sessions`): every server on the database knows it, and it outlives a
//! restart. A session of a person takes their current role, and ends when they are removed.
//! Expired sessions are forgotten whenever a session is opened. This module checks nothing
//! about requests — `auth` does that.

use std::time::Duration;

use crate::auth::{Caller, new_token};
use crate::error::AppError;
use crate::storage::sessions::StoredSession;
use crate::storage::{Store, now};

/// The name of the session cookie.
pub const COOKIE: &str = "keel_session";

/// How the server's own token is named when a browser signs in with it.
const BROWSER: &str = "browser";

/// The sessions, shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct Sessions {
    ttl: Duration,
    store: Store,
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
    pub fn new(ttl: Duration, store: Store) -> Sessions {
        Sessions { ttl, store }
    }

    /// How long a session lasts from sign-in.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session of `caller` (`browser` for the server's own token): its id and its CSRF
    /// token.
    pub async fn open(&self, caller: Caller) -> Result<(String, String), AppError> {
        let (id, csrf) = (new_token()?, new_token()?);
        let session = StoredSession {
            csrf: csrf.clone(),
            person: (caller.by != BROWSER).then_some(caller.by),
            role: caller.role,
            expires_at: now() + self.ttl.as_secs_f64(),
        };
        self.store.open_session(id.clone(), session).await?;
        Ok((id, csrf))
    }

    pub async fn lookup(&self, id: &str) -> Result<Lookup, AppError> {
        let Some(s) = self.store.session(id).await? else {
            return Ok(Lookup::Unknown);
        };
        if s.expires_at <= now() {
            return Ok(Lookup::Expired);
        }
        let caller = Caller {
            by: s.person.unwrap_or_else(|| BROWSER.into()),
            role: s.role,
        };
        Ok(Lookup::Valid {
            csrf: s.csrf,
            caller,
        })
    }

    pub async fn close(&self, id: &str) -> Result<(), AppError> {
        self.store.close_session(id.to_owned()).await?;
        Ok(())
    }
}
