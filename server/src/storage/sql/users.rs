//! The users table: people, their roles and their token hashes.

use keel_protocol::users::check_user_name;
use keel_protocol::{Role, UserRecord};
use sqlx::Executor;

use super::{Conn, Db, StoreError, StoreResult};
pub use crate::storage::users::{User, hash};

pub async fn by_token(
    db: impl Executor<'_, Database = Db>,
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

pub async fn list(db: impl Executor<'_, Database = Db>) -> StoreResult<Vec<UserRecord>> {
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
pub async fn add(
    db: impl Executor<'_, Database = Db>,
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

pub async fn set_role(
    db: impl Executor<'_, Database = Db>,
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
pub async fn remove(db: &mut Conn, name: &str) -> StoreResult<()> {
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
