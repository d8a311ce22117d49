//! Named people and what each may do.
//!
//! A `viewer` sees; an `operator` also steers (creates and streams runs, issues commands, sets
//! rules and thresholds, acknowledges incidents); an `admin` also launches grids and manages
//! people. The server's own token (`KEEL_TOKEN`) is an admin.

use serde::{Deserialize, Serialize};

/// What a person may do; each role may do everything the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One person as listed (their token is never shown again after it was made).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub created_at: f64,
}

/// `POST /api/v1/users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
}

/// The answer to `POST /api/v1/users`: the person, and their token — shown this once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: UserRecord,
    pub token: String,
}

/// `PUT /api/v1/users/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

/// The longest name a person may have.
pub const MAX_USER_NAME: usize = 64;

/// Whether `name` may name a person: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a
/// letter or digit. `token`, `browser` and names starting with `rule:` are how the audit log
/// names the server's token, its browser sessions and rules, so no person takes them.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let starts = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_USER_NAME || !ok_chars || !starts {
        return Err(format!(
            "`{name}` cannot name a person: use 1 to {MAX_USER_NAME} letters, digits, `.`, `_` \
             or `-`, starting with a letter or digit"
        ));
    }
    if matches!(name, "token" | "browser") {
        return Err(format!(
            "`{name}` is how the audit log names the server's own token; pick another name"
        ));
    }
    Ok(())
}
