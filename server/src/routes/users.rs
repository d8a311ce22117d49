//! The people of the server, for admins: who there is, adding someone (their token is in the
//! answer, once), changing a role, removing someone (their token and sessions stop working at
//! once). `keel users` does the same on the database file.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keel_protocol::UserRecord;
use keel_protocol::users::{CreatedUser, NewUser, RoleChange};

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiJson, ApiPath, AppResult};
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/api/v1/users", list)
        .post("/api/v1/users", add)
        .put("/api/v1/users/{name}", set_role)
        .delete("/api/v1/users/{name}", remove)
}

async fn list(State(state): State<AppState>, _admin: Admin) -> AppResult<Json<Vec<UserRecord>>> {
    Ok(Json(state.store.users().await?))
}

async fn add(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(req): ApiJson<NewUser>,
) -> AppResult<(StatusCode, Json<CreatedUser>)> {
    let (user, token) = state.store.add_user(req.name, req.role).await?;
    tracing::info!(who = admin.by, user = user.name, role = %user.role, "added a person");
    Ok((StatusCode::CREATED, Json(CreatedUser { user, token })))
}

async fn set_role(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RoleChange>,
) -> AppResult<Json<UserRecord>> {
    let user = state.store.set_role(name, req.role).await?;
    tracing::info!(who = admin.by, user = user.name, role = %user.role, "changed a role");
    Ok(Json(user))
}

async fn remove(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(name): ApiPath<String>,
) -> AppResult<StatusCode> {
    state.store.remove_user(name.clone()).await?;
    tracing::info!(who = admin.by, user = name, "removed a person");
    Ok(StatusCode::NO_CONTENT)
}
