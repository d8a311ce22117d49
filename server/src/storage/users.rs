//! Named people: their role and the SHA-256 of their token. A token is random (128 bits from
//! the OS), so one round of SHA-256 is enough to keep a copy of the database from signing
//! anyone in; the token itself is shown once, when the person is added.
//!
//! The server only reads this table (each request with a token looks its hash up, so a person
//! removed with `keel users remove` is refused at once); [`Directory`] is how `keel users`
//! changes it, beside a running server.

use keel_protocol::{Role, UserRecord};
use sha2::{Digest, Sha256};

use super::{Location, Pool, StoreError, on_backend, postgres, sqlite};

/// Someone a token or a session belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

/// The hex SHA-256 of a token, as stored.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The people of a database, for `keel users`: opened beside a server that may be running on
/// it (SQLite serialises the writes).
pub struct Directory {
    pool: Pool,
}

impl Directory {
    /// Opens the database at `at` (a SQLite file is created if missing) and applies its
    /// migrations.
    pub async fn open(at: impl Into<Location>) -> anyhow::Result<Directory> {
        let pool = match at.into() {
            Location::Sqlite(path) => Pool::Sqlite(sqlite::setup(&path).await?),
            Location::Postgres(url) => Pool::Postgres(postgres::setup(&url, 1).await?),
        };
        Ok(Directory { pool })
    }

    /// Adds a person; their token, which is not kept.
    pub async fn add(&self, name: &str, role: Role) -> anyhow::Result<String> {
        let added = on_backend!(&self.pool, db, sql => sql::users::add(db, name, role).await);
        Ok(added?.1)
    }

    /// Changes a person's role; false when there is nobody of that name.
    pub async fn set_role(&self, name: &str, role: Role) -> anyhow::Result<bool> {
        let set = on_backend!(&self.pool, db, sql => sql::users::set_role(db, name, role).await);
        found(set.map(|_| ()))
    }

    /// Removes a person (their token and sessions stop working at once); false when there was
    /// nobody of that name.
    pub async fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let removed = on_backend!(&self.pool, db, sql => {
            let mut tx = db.begin().await?;
            let removed = sql::users::remove(&mut tx, name).await;
            tx.commit().await?;
            removed
        });
        found(removed)
    }

    pub async fn list(&self) -> anyhow::Result<Vec<UserRecord>> {
        Ok(on_backend!(&self.pool, db, sql => sql::users::list(db).await)?)
    }

    /// The person `token` belongs to, if anyone.
    pub async fn by_token(&self, token: &str) -> anyhow::Result<Option<User>> {
        Ok(on_backend!(&self.pool, db, sql => sql::users::by_token(db, token).await)?)
    }

    pub async fn close(self) {
        on_backend!(self.pool, db, _sql => db.close().await)
    }
}

/// A change to someone: whether they were there.
fn found(result: Result<(), StoreError>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_person_added_signs_in_by_their_token_and_not_after_removal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keel.db");
        let people = Directory::open(&db).await.unwrap();
        let token = people.add("alice", Role::Operator).await.unwrap();
        assert_eq!(token.len(), 32);
        let again = people.add("alice", Role::Viewer).await.unwrap_err();
        assert!(again.to_string().contains("there already"), "{again}");
        assert!(people.add("token", Role::Admin).await.is_err());
        assert!(people.add("a b", Role::Admin).await.is_err());
        let found = people.by_token(&token).await.unwrap();
        assert_eq!(
            found,
            Some(User {
                name: "alice".into(),
                role: Role::Operator
            })
        );
        assert_eq!(people.by_token("nope").await.unwrap(), None);
        // Only the hash is stored.
        let Pool::Sqlite(db) = &people.pool else {
            unreachable!("a file")
        };
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM users")
            .fetch_one(db)
            .await
            .unwrap();
        assert_ne!(stored, token);
        assert_eq!(stored, hash(&token));
        assert!(people.set_role("alice", Role::Admin).await.unwrap());
        assert_eq!(people.list().await.unwrap()[0].role, Role::Admin);
        assert!(people.remove("alice").await.unwrap());
        assert!(!people.remove("alice").await.unwrap());
        assert_eq!(people.by_token(&token).await.unwrap(), None);
    }
}
