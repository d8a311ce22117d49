//! Named people: their role and the SHA-256 of their token. A token is random (128 bits from
//! the OS), so one round of SHA-256 is enough to keep a copy of the database from signing
//! anyone in; the token itself is shown once, when the person is added.
//!
//! The server only reads this table (each request with a token looks its hash up, so a person
//! removed with `keel users remove` is refused at once); [`Directory`] is how `keel users`
//! changes it, beside a running server.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use keel_protocol::users::check_user_name;
use keel_protocol::{Role, UserRecord};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{SqliteConnection, SqliteExecutor};

use super::{StoreError, StoreResult};

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

pub(super) async fn by_token(
    db: impl SqliteExecutor<'_>,
    token: &str,
) -> StoreResult<Option<User>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT name, role FROM users WHERE token_hash = $1")
            .bind(hash(token))
            .fetch_optional(db)
            .await?;
    Ok(row.and_then(|(name, role)| {
        Some(User {
            name,
            role: Role::parse(&role)?,
        })
    }))
}

pub(super) async fn list(db: impl SqliteExecutor<'_>) -> StoreResult<Vec<UserRecord>> {
    let rows: Vec<(String, String, f64)> =
        sqlx::query_as("SELECT name, role, created_at FROM users ORDER BY name")
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, role, created_at)| {
            Some(UserRecord {
                name,
                role: Role::parse(&role)?,
                created_at,
            })
        })
        .collect())
}

/// Adds a person: their record and their token (which is not kept).
pub(super) async fn add(
    db: impl SqliteExecutor<'_>,
    name: &str,
    role: Role,
) -> StoreResult<(UserRecord, String)> {
    check_user_name(name).map_err(StoreError::Invalid)?;
    let token = crate::auth::new_token()?;
    let created_at = super::now();
    let added = sqlx::query(
        "INSERT INTO users (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash(&token))
    .bind(created_at)
    .execute(db)
    .await?;
    if added.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "`{name}` is there already: remove them first to give them a new token"
        )));
    }
    let user = UserRecord {
        name: name.to_owned(),
        role,
        created_at,
    };
    Ok((user, token))
}

pub(super) async fn set_role(
    db: impl SqliteExecutor<'_>,
    name: &str,
    role: Role,
) -> StoreResult<UserRecord> {
    let row: Option<f64> =
        sqlx::query_scalar("UPDATE users SET role = $1 WHERE name = $2 RETURNING created_at")
            .bind(role.as_str())
            .bind(name)
            .fetch_optional(db)
            .await?;
    match row {
        Some(created_at) => Ok(UserRecord {
            name: name.to_owned(),
            role,
            created_at,
        }),
        None => Err(nobody(name)),
    }
}

/// Removes a person and their sessions.
pub(super) async fn remove(db: &mut SqliteConnection, name: &str) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM users WHERE name = $1")
        .bind(name)
        .execute(&mut *db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(nobody(name));
    }
    sqlx::query("DELETE FROM sessions WHERE person = $1")
        .bind(name)
        .execute(&mut *db)
        .await?;
    Ok(())
}

fn nobody(name: &str) -> StoreError {
    StoreError::NotFound(format!("person `{name}`"))
}

/// The people of a database, for `keel users`: opened beside a server that may be running on
/// it (SQLite serialises the writes).
pub struct Directory {
    pool: SqlitePool,
}

impl Directory {
    /// Opens (creating if missing) the database at `path` and applies its migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Directory> {
        // Connecting switches a new file to WAL, which a server starting on it would race.
        let migrating = super::lock::migrating(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the database {}", path.display()))?;
        super::SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .context("applying migrations")?;
        drop(migrating);
        Ok(Directory { pool })
    }

    /// Adds a person; their token, which is not kept.
    pub async fn add(&self, name: &str, role: Role) -> anyhow::Result<String> {
        Ok(add(&self.pool, name, role).await?.1)
    }

    /// Changes a person's role; false when there is nobody of that name.
    pub async fn set_role(&self, name: &str, role: Role) -> anyhow::Result<bool> {
        match set_role(&self.pool, name, role).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a person (their token and sessions stop working at once); false when there was
    /// nobody of that name.
    pub async fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let mut conn = self.pool.acquire().await?;
        match remove(&mut conn, name).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> anyhow::Result<Vec<UserRecord>> {
        Ok(list(&self.pool).await?)
    }

    pub async fn close(self) {
        self.pool.close().await;
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
        let found = by_token(&people.pool, &token).await.unwrap();
        assert_eq!(
            found,
            Some(User {
                name: "alice".into(),
                role: Role::Operator
            })
        );
        assert_eq!(by_token(&people.pool, "nope").await.unwrap(), None);
        // Only the hash is stored.
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM users")
            .fetch_one(&people.pool)
            .await
            .unwrap();
        assert_ne!(stored, token);
        assert_eq!(stored, hash(&token));
        assert!(people.set_role("alice", Role::Admin).await.unwrap());
        assert_eq!(people.list().await.unwrap()[0].role, Role::Admin);
        assert!(people.remove("alice").await.unwrap());
        assert!(!people.remove("alice").await.unwrap());
        assert_eq!(by_token(&people.pool, &token).await.unwrap(), None);
    }
}
