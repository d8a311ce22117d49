//! The sessions table: a session is found by the hash of its id, with who it is — a person
//! (whose role is read from `users` each time, so a change of role or a removal applies at
//! once) or the server's own token.

use keel_protocol::Role;
use sqlx::{Executor, Row};

use super::users::hash;
use super::{Conn, Db, StoreResult};
pub use crate::storage::sessions::StoredSession;

/// The session of id `id`; `None` when there is none, or its person has been removed.
pub async fn find(
    db: impl Executor<'_, Database = Db>,
    id: &str,
) -> StoreResult<Option<StoredSession>> {
    let row = sqlx::query(
        "SELECT s.csrf, s.person, COALESCE(u.role, s.role) AS role, s.expires_at,
                (s.person IS NULL OR u.name IS NOT NULL) AS present
         FROM sessions s LEFT JOIN users u ON u.name = s.person
         WHERE s.id_hash = $1",
    )
    .bind(hash(id))
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| {
        let present: bool = r.get("present");
        present.then(|| StoredSession {
            csrf: r.get("csrf"),
            person: r.get("person"),
            role: Role::parse(r.get("role")).unwrap_or(Role::Viewer),
            expires_at: r.get("expires_at"),
        })
    }))
}

/// Stores a new session, forgetting the ones that have expired.
pub async fn open(tx: &mut Conn, id: &str, session: &StoredSession, now: f64) -> StoreResult<()> {
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO sessions (id_hash, csrf, person, role, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash(id))
    .bind(&session.csrf)
    .bind(&session.person)
    .bind(session.role.as_str())
    .bind(session.expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn close(tx: &mut Conn, id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(hash(id))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
