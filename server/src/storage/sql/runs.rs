//! Reading runs, their series, branches, events and commands.

use keel_protocol::{
    BranchInfo, CommandRecord, CommandStatus, EventRecord, RunDetail, RunStatus, StepRecord,
};
use sqlx::{Executor, Row};

use super::{Conn, Db, DbRow, Pool, StoreError, StoreResult, codec};
pub use crate::storage::runs::*;

macro_rules! run_columns {
    () => {
        "id, name, grp, variant, tags, config, layers, ranks, status, branch, last_step, last_loss, \
         tokens, steps, alerts, open_incidents, thresholds, created_at, updated_at, seen_at"
    };
}

/// The columns of [`run_columns`] with the config left out.
macro_rules! list_columns {
    () => {
        "id, name, grp, variant, tags, '' AS config, layers, ranks, status, branch, last_step, \
         last_loss, tokens, steps, alerts, open_incidents, NULL AS thresholds, created_at, \
         updated_at, seen_at"
    };
}

fn run_from(row: &DbRow) -> RunRow {
    let opt_u64 = |name: &str| row.get::<Option<i64>, _>(name).map(|v| v as u64);
    RunRow {
        id: row.get("id"),
        name: row.get("name"),
        group: row.get("grp"),
        variant: row.get("variant"),
        tags: serde_json::from_str(row.get("tags")).unwrap_or_default(),
        config: row.get("config"),
        layers: row.get::<i64, _>("layers") as u32,
        ranks: row.get::<Option<i64>, _>("ranks").map(|r| r as u32),
        status: RunStatus::parse(row.get("status")).unwrap_or(RunStatus::Failed),
        branch: row.get::<i64, _>("branch") as u32,
        last_step: opt_u64("last_step"),
        last_loss: row
            .get::<Option<Vec<u8>>, _>("last_loss")
            .and_then(|b| codec::blob_f64(&b)),
        tokens: opt_u64("tokens"),
        steps: row.get::<i64, _>("steps") as u64,
        alerts: row.get::<i64, _>("alerts") as u64,
        open_incidents: row.get::<i64, _>("open_incidents") as u64,
        thresholds: row.get("thresholds"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        seen_at: row.get("seen_at"),
    }
}

pub async fn run_row(db: impl Executor<'_, Database = Db>, id: i64) -> StoreResult<RunRow> {
    let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");
    let row = sqlx::query(sql).bind(id).fetch_optional(db).await?;
    row.map(|r| run_from(&r))
        .ok_or_else(|| StoreError::NotFound(format!("run {id}")))
}

/// Up to `limit` runs with ids below `before` (all, without it), newest first. Their
/// configs are left out (`config` is empty): a list never needs them, and they can be large.
pub async fn list_runs(
    db: impl Executor<'_, Database = Db>,
    before: Option<i64>,
    limit: u32,
) -> StoreResult<Vec<RunRow>> {
    let sql = concat!(
        "SELECT ",
        list_columns!(),
        " FROM runs WHERE id < $1 ORDER BY id DESC LIMIT $2"
    );
    let rows = sqlx::query(sql)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(run_from).collect())
}

/// How many runs there are.
pub async fn count_runs(db: impl Executor<'_, Database = Db>) -> StoreResult<u64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs")
        .fetch_one(db)
        .await?;
    Ok(n as u64)
}

/// The ids of a group's runs, oldest first.
pub async fn group_ids(db: impl Executor<'_, Database = Db>, group: &str) -> StoreResult<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE grp = $1 ORDER BY id")
        .bind(group)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A run's rules: those put through the API, else its config's `alerts.rules` (a malformed
/// list is no rules, logged: it must not stop a run from being recorded).
/// A run's alert thresholds: those put through the API, else its config's `alerts`.
pub async fn thresholds(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<crate::alerts::Thresholds> {
    let run = run_row(db, run_id).await?;
    let config = serde_json::from_str(&run.config).unwrap_or_default();
    let set = run
        .thresholds
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    Ok(set.unwrap_or_else(|| crate::alerts::Thresholds::from_config(&config)))
}

pub async fn rules(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<Vec<keel_protocol::Rule>> {
    let row: Option<(Option<String>, String)> =
        sqlx::query_as("SELECT rules, config FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(db)
            .await?;
    let Some((put, config)) = row else {
        return Err(StoreError::NotFound(format!("run {run_id}")));
    };
    let parsed = match put {
        Some(text) => serde_json::from_str(&text),
        None => {
            let config: serde_json::Value = serde_json::from_str(&config).unwrap_or_default();
            match config.pointer("/alerts/rules") {
                Some(rules) => serde_json::from_value(rules.clone()),
                None => Ok(Vec::new()),
            }
        }
    };
    Ok(parsed.unwrap_or_else(|e| {
        tracing::warn!(run = run_id, "the run's rules do not read: {e}");
        Vec::new()
    }))
}

/// Runs that are `running` but stored no step since `before`: (id, last step, last change).
pub async fn quiet_running_runs(
    db: impl Executor<'_, Database = Db>,
    before: f64,
) -> StoreResult<Vec<(i64, Option<u64>, f64)>> {
    let rows: Vec<(i64, Option<i64>, f64)> = sqlx::query_as(
        "SELECT id, last_step, updated_at FROM runs WHERE status = 'running' AND updated_at < $1",
    )
    .bind(before)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, last, at)| (id, last.map(|s| s as u64), at))
        .collect())
}

/// Where a run's live stream stands: its last step arrival and its last event.
pub async fn cursor(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<super::Cursor> {
    let (seq, event): (i64, i64) = sqlx::query_as(
        "SELECT seq, COALESCE((SELECT id FROM events WHERE run_id = $1 ORDER BY id DESC LIMIT 1), 0)
         FROM runs WHERE id = $2",
    )
    .bind(run_id)
    .bind(run_id)
    .fetch_one(db)
    .await?;
    Ok(super::Cursor { seq, event })
}

/// Where the whole database's writes stand: the last step arrival and the last event.
pub async fn write_cursor(db: impl Executor<'_, Database = Db>) -> StoreResult<super::Cursor> {
    let (seq, event): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM runs),
                COALESCE((SELECT id FROM events ORDER BY id DESC LIMIT 1), 0)",
    )
    .fetch_one(db)
    .await?;
    Ok(super::Cursor { seq, event })
}

/// Runs whose trainer has not been heard from since `before` while they should be stepping.
pub async fn silent_runs(
    db: impl Executor<'_, Database = Db>,
    before: f64,
) -> StoreResult<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE status IN ('running', 'paused') AND seen_at < $1",
    )
    .bind(before)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The newest run of `variant` in `group`: how a launched trainer's run is found.
pub async fn run_of_variant(
    db: impl Executor<'_, Database = Db>,
    group: &str,
    variant: &str,
) -> StoreResult<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE grp = $1 AND variant = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(group)
    .bind(variant)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(id,)| id))
}

pub async fn series_of(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<Vec<SeriesRow>> {
    let rows: Vec<(i64, String, String, i64)> =
        sqlx::query_as("SELECT id, kind, name, width FROM series WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, kind, name, width)| SeriesRow {
            id: id as u32,
            layer: kind == "layer",
            name,
            width: width as usize,
        })
        .collect())
}

pub async fn run_detail(db: &Pool, id: i64) -> StoreResult<RunDetail> {
    let run = run_row(db, id).await?;
    let series = series_of(db, id).await?;
    let names = |layer: bool| {
        series
            .iter()
            .filter(|s| s.layer == layer)
            .map(|s| s.name.clone())
            .collect()
    };
    Ok(RunDetail {
        summary: run.summary(),
        config: serde_json::from_str(&run.config).unwrap_or(serde_json::Value::Null),
        scalars: names(false),
        layer_stats: names(true),
        steps: run.steps,
        branches: branches(db, id)
            .await?
            .into_iter()
            .map(|b| BranchInfo {
                branch: b.branch,
                parent: b.parent,
                fork_step: b.fork_step,
            })
            .collect(),
    })
}

pub async fn branches(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<Vec<BranchRow>> {
    let rows: Vec<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT branch, parent, fork_step FROM branches WHERE run_id = $1 ORDER BY branch",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(b, p, f)| BranchRow {
            branch: b as u32,
            parent: p.map(|p| p as u32),
            fork_step: f.map(|f| f as u64),
        })
        .collect())
}

/// Events of a run with an id above `after`, oldest first, at most `limit`.
pub async fn events(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT id, run_id, kind, name, severity, step, message, time FROM events
         WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| EventRecord {
            id: r.get("id"),
            run_id: r.get("run_id"),
            kind: r.get("kind"),
            name: r.get("name"),
            severity: severity_from(r.get("severity")),
            step: r.get::<Option<i64>, _>("step").map(|s| s as u64),
            message: r.get("message"),
            time: r.get("time"),
        })
        .collect())
}

macro_rules! command_columns {
    () => {
        "id, run_id, body, status, applied_step, message, issued_by, created_at, updated_at"
    };
}

fn command_from(r: &DbRow) -> StoreResult<CommandRecord> {
    let body: String = r.get("body");
    Ok(CommandRecord {
        id: r.get("id"),
        run_id: r.get("run_id"),
        command: serde_json::from_str(&body).map_err(anyhow::Error::from)?,
        status: CommandStatus::parse(r.get("status")).unwrap_or(CommandStatus::Rejected),
        applied_step: r.get::<Option<i64>, _>("applied_step").map(|s| s as u64),
        message: r.get("message"),
        issued_by: r.get("issued_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

pub async fn command(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
    id: i64,
) -> StoreResult<CommandRecord> {
    let sql = concat!(
        "SELECT ",
        command_columns!(),
        " FROM commands WHERE run_id = $1 AND id = $2"
    );
    let row = sqlx::query(sql)
        .bind(run_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    match row {
        Some(r) => command_from(&r),
        None => Err(StoreError::NotFound(format!(
            "command {id} of run {run_id}"
        ))),
    }
}

pub async fn commands(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<Vec<CommandRecord>> {
    let sql = concat!(
        "SELECT ",
        command_columns!(),
        " FROM commands WHERE run_id = $1 ORDER BY id"
    );
    let rows = sqlx::query(sql).bind(run_id).fetch_all(db).await?;
    rows.iter().map(command_from).collect()
}

/// Commands not yet applied or rejected, oldest first.
pub async fn open_commands(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
) -> StoreResult<Vec<CommandRecord>> {
    let sql = concat!(
        "SELECT ",
        command_columns!(),
        " FROM commands WHERE run_id = $1 AND status IN ('queued', 'delivered') ORDER BY id"
    );
    let rows = sqlx::query(sql).bind(run_id).fetch_all(db).await?;
    rows.iter().map(command_from).collect()
}

/// The steps of a branch that arrived after `after` and before `before` (arrival numbers), at
/// most the last `limit` of them, in arrival order.
pub async fn steps_between(
    tx: &mut Conn,
    run_id: i64,
    branch: u32,
    (after, before): (i64, i64),
    limit: i64,
) -> StoreResult<Vec<StepRecord>> {
    let series = series_of(&mut *tx, run_id).await?;
    let mut rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT step, data FROM steps WHERE run_id = $1 AND seq > $2 AND seq < $3 AND branch = $4
         ORDER BY seq DESC LIMIT $5",
    )
    .bind(run_id)
    .bind(after)
    .bind(before)
    .bind(i64::from(branch))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|(step, data)| decode_step(step as u64, &data, &series))
        .collect())
}

/// Steps of `branch` that arrived after arrival number `seq`, oldest arrival first, at most
/// `limit` (for a live subscriber that resumes).
pub async fn steps_since(
    db: &Pool,
    run_id: i64,
    seq: i64,
    limit: i64,
) -> StoreResult<Vec<(u32, i64, StepRecord)>> {
    let series = series_of(db, run_id).await?;
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT branch, step, seq, data FROM steps WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run_id)
    .bind(seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(b, step, seq, data)| (b as u32, seq, decode_step(step as u64, &data, &series)))
        .collect())
}
