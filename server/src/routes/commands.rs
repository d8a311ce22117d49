//! Operator commands: issuing and listing them, the trainer's long poll, outcomes, events.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keel_protocol::{
    Command, CommandOutcome, CommandRecord, CommandStatus, EventRecord, Incident, LiveMessage,
    Rules,
};
use serde::Deserialize;

use crate::AppState;
use crate::alerts::Thresholds;
use crate::auth::Operator;
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, AppResult};
use crate::routes::table::Routes;

pub fn router() -> Routes {
    Routes::new()
        .post("/api/v1/runs/{id}/commands", issue)
        .get("/api/v1/runs/{id}/commands", list)
        .get("/api/v1/runs/{id}/commands/pending", pending)
        .post("/api/v1/runs/{id}/commands/{cid}/outcome", outcome)
        .get("/api/v1/runs/{id}/events", events)
        .get("/api/v1/runs/{id}/rules", rules)
        .put("/api/v1/runs/{id}/rules", set_rules)
        .get("/api/v1/runs/{id}/thresholds", thresholds)
        .put("/api/v1/runs/{id}/thresholds", set_thresholds)
        .get("/api/v1/runs/{id}/incidents", incidents)
        .post("/api/v1/runs/{id}/incidents/{iid}/ack", acknowledge)
}

/// The longest a trainer's poll for commands is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

async fn issue(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(command): ApiJson<Command>,
) -> AppResult<(StatusCode, Json<CommandRecord>)> {
    command.validate().map_err(AppError::Invalid)?;
    if let Command::Anneal {
        seq_len: Some(len), ..
    } = &command
    {
        let run = state.store.run_row(id).await?;
        let config = serde_json::from_str(&run.config).unwrap_or_default();
        if let Some(max) = max_seq_len(&config)
            && u64::from(*len) > max
        {
            return Err(AppError::Invalid(format!(
                "seq_len {len} is above this run's model.max_seq_len of {max}"
            )));
        }
    }
    let record = state.store.add_command(id, command, op.by).await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// The longest context a run's config allows, where it says: keel's trainer writes
/// `model.max_seq_len`, and `null` there means `model.seq_len`.
fn max_seq_len(config: &serde_json::Value) -> Option<u64> {
    let model = config.get("model")?;
    match model.get("max_seq_len")? {
        serde_json::Value::Null => model.get("seq_len")?.as_u64(),
        max => max.as_u64(),
    }
}

async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<Vec<CommandRecord>>> {
    let store = &state.store;
    store.run_row(id).await?;
    Ok(Json(store.commands(id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingQuery {
    /// Only commands with an id above this (the trainer's newest seen); 0 after a restart.
    #[serde(default)]
    after: i64,
    #[serde(default)]
    wait_ms: u64,
}

/// The trainer's long poll: open commands above `after`, delivered as soon as there are any.
async fn pending(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<PendingQuery>,
) -> AppResult<Json<Vec<CommandRecord>>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(MAX_WAIT);
    // Subscribe before looking, so a command queued in between still wakes us.
    let mut rx = state.hub.subscribe(id);
    loop {
        let open = state.store.take_commands(id).await?;
        let open: Vec<_> = open.into_iter().filter(|c| c.id > q.after).collect();
        if !open.is_empty() {
            return Ok(Json(open));
        }
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(p) => match &p.message {
                        LiveMessage::Command { command } if command.status == CommandStatus::Queued => break,
                        _ => continue,
                    },
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(deadline) => return Ok(Json(Vec::new())),
                () = state.shutdown.cancelled() => return Ok(Json(Vec::new())),
            }
        }
    }
}

async fn outcome(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath((id, cid)): ApiPath<(i64, i64)>,
    ApiJson(outcome): ApiJson<CommandOutcome>,
) -> AppResult<Json<CommandRecord>> {
    if !outcome.status.is_final() {
        return Err(AppError::Invalid(
            "an outcome's status is `applied` or `rejected`".into(),
        ));
    }
    let record = state.store.outcome(id, cid, outcome).await?;
    Ok(Json(record))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
}

async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> AppResult<Json<Vec<EventRecord>>> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(AppError::BadRequest(
            "`limit` must be between 1 and 10000".into(),
        ));
    }
    let store = &state.store;
    store.run_row(id).await?;
    Ok(Json(store.events(id, q.after, limit).await?))
}

/// Most rules a run has.
pub const MAX_RULES: usize = 32;

async fn rules(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> AppResult<Json<Rules>> {
    let rules = state.store.rules(id).await?;
    Ok(Json(Rules { rules }))
}

/// Replaces the run's rules (they then take precedence over its config's `alerts.rules`).
async fn set_rules(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<Rules>,
) -> AppResult<Json<Rules>> {
    if body.rules.len() > MAX_RULES {
        return Err(AppError::Invalid(format!("at most {MAX_RULES} rules")));
    }
    for (i, rule) in body.rules.iter().enumerate() {
        if !crate::alerts::NAMES.contains(&rule.on.as_str()) {
            return Err(AppError::Invalid(format!(
                "rule {i}: `on` is an alert: one of {}",
                crate::alerts::NAMES.join(", ")
            )));
        }
        rule.action
            .validate()
            .map_err(|why| AppError::Invalid(format!("rule {i}: {why}")))?;
        if rule.max_firings == Some(0) {
            return Err(AppError::Invalid(format!(
                "rule {i}: `max_firings` is at least 1"
            )));
        }
        if rule.cooldown_steps > super::data::MAX_STEP {
            return Err(AppError::Invalid(format!(
                "rule {i}: `cooldown_steps` is too large"
            )));
        }
    }
    let rules = body.rules;
    state.store.set_rules(id, rules.clone(), op.by).await?;
    Ok(Json(Rules { rules }))
}

async fn thresholds(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<Thresholds>> {
    Ok(Json(state.store.thresholds(id).await?))
}

/// Replaces the run's alert thresholds; keys left out keep their defaults.
async fn set_thresholds(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(t): ApiJson<Thresholds>,
) -> AppResult<Json<Thresholds>> {
    t.validate().map_err(AppError::Invalid)?;
    state.store.set_thresholds(id, t.clone(), op.by).await?;
    Ok(Json(t))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentsQuery {
    /// Only those not yet acknowledged.
    #[serde(default)]
    open: bool,
}

async fn incidents(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<IncidentsQuery>,
) -> AppResult<Json<Vec<Incident>>> {
    let store = &state.store;
    store.run_row(id).await?;
    Ok(Json(store.incidents(id, q.open).await?))
}

async fn acknowledge(
    State(state): State<AppState>,
    op: Operator,
    ApiPath((id, iid)): ApiPath<(i64, i64)>,
) -> AppResult<Json<Incident>> {
    let incident = state.store.ack_incident(id, iid, op.by).await?;
    Ok(Json(incident))
}
