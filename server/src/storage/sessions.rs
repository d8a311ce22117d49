//! The sessions table: a session is found by the hash of its id, with who it is — a person
//! (whose role is read from `users` each time, so a change of role or a removal applies at
//! once) or the server's own token.

use keel_protocol::Role;

/// A session as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    pub csrf: String,
    /// The person, or `None` for the server's token.
    pub person: Option<String>,
    pub role: Role,
    pub expires_at: f64,
}
