//! Incidents: a run's consecutive alerts of one kind gathered into one (start, peak, end),
//! kept open until an operator acknowledges it.

use keel_protocol::{EventRecord, Incident};
use sqlx::{Executor, Row};

use super::runs::{severity_from, severity_str};
use super::{Conn, Db, DbRow, StoreError, StoreResult};

/// An alert within this many steps of an open incident of its kind joins it. Spike alerts
/// stay quiet for a few hundred steps after firing, slow ones for a thousand: a run that
/// keeps raising one alert has one incident.
pub const GAP_STEPS: u64 = 2_000;

macro_rules! columns {
    () => {
        "id, run_id, name, severity, start_step, peak_step, peak_message, end_step, alerts, \
         opened_at, updated_at, acked_by, acked_at"
    };
}

fn from_row(r: &DbRow) -> Incident {
    let step = |name: &str| r.get::<i64, _>(name) as u64;
    Incident {
        id: r.get("id"),
        run_id: r.get("run_id"),
        name: r.get("name"),
        severity: severity_from(r.get("severity")),
        start_step: step("start_step"),
        peak_step: step("peak_step"),
        peak_message: r.get("peak_message"),
        end_step: step("end_step"),
        alerts: step("alerts"),
        opened_at: r.get("opened_at"),
        updated_at: r.get("updated_at"),
        acked_by: r.get("acked_by"),
        acked_at: r.get("acked_at"),
    }
}

/// Gathers a stored alert (of `size`, in its own units: larger is worse) into its kind's
/// open incident, or opens one. Returns the incident and whether it is new.
pub async fn note(tx: &mut Conn, alert: &EventRecord, size: f64) -> StoreResult<(Incident, bool)> {
    let step = alert.step.unwrap_or(0) as i64;
    let gap = GAP_STEPS as i64;
    let sql = concat!(
        "SELECT ",
        columns!(),
        ", peak_size FROM incidents
         WHERE run_id = $1 AND name = $2 AND acked_at IS NULL
           AND end_step + $3 >= $4 AND start_step <= $5 + $6
         ORDER BY id DESC LIMIT 1"
    );
    let open = sqlx::query(sql)
        .bind(alert.run_id)
        .bind(&alert.name)
        .bind(gap)
        .bind(step)
        .bind(step)
        .bind(gap)
        .fetch_optional(&mut *tx)
        .await?;
    let size = if size.is_nan() { f64::INFINITY } else { size };
    let id = match open {
        Some(row) => {
            let id: i64 = row.get("id");
            let peak = size > row.get::<f64, _>("peak_size");
            let worse = alert.severity > severity_from(row.get("severity"));
            sqlx::query(
                "UPDATE incidents SET
                   start_step = CASE WHEN $1 < start_step THEN $1 ELSE start_step END,
                   end_step = CASE WHEN $2 > end_step THEN $2 ELSE end_step END,
                   alerts = alerts + 1, updated_at = $3,
                   severity = CASE WHEN $4 THEN $5 ELSE severity END,
                   peak_step = CASE WHEN $6 THEN $7 ELSE peak_step END,
                   peak_size = CASE WHEN $8 THEN $9 ELSE peak_size END,
                   peak_message = CASE WHEN $10 THEN $11 ELSE peak_message END
                 WHERE id = $12",
            )
            .bind(step)
            .bind(step)
            .bind(alert.time)
            .bind(worse)
            .bind(severity_str(alert.severity))
            .bind(peak)
            .bind(step)
            .bind(peak)
            .bind(size)
            .bind(peak)
            .bind(&alert.message)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            return Ok((one(&mut *tx, alert.run_id, id).await?, false));
        }
        None => sqlx::query(
            "INSERT INTO incidents (run_id, name, severity, start_step, peak_step, end_step,
               peak_size, peak_message, alerts, opened_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10) RETURNING id",
        )
        .bind(alert.run_id)
        .bind(&alert.name)
        .bind(severity_str(alert.severity))
        .bind(step)
        .bind(step)
        .bind(step)
        .bind(size)
        .bind(&alert.message)
        .bind(alert.time)
        .bind(alert.time)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>("id"),
    };
    sqlx::query("UPDATE runs SET open_incidents = open_incidents + 1 WHERE id = $1")
        .bind(alert.run_id)
        .execute(&mut *tx)
        .await?;
    Ok((one(&mut *tx, alert.run_id, id).await?, true))
}

/// Marks an incident acknowledged by `by` at `time`. Acknowledging one already acknowledged
/// is a conflict (the first acknowledgement stands).
pub async fn acknowledge(
    tx: &mut Conn,
    run_id: i64,
    id: i64,
    by: &str,
    time: f64,
) -> StoreResult<Incident> {
    let incident = one(&mut *tx, run_id, id).await?;
    if let Some(who) = &incident.acked_by {
        return Err(StoreError::Conflict(format!(
            "incident {id} was acknowledged already, by {who}"
        )));
    }
    sqlx::query("UPDATE incidents SET acked_by = $1, acked_at = $2, updated_at = $3 WHERE id = $4")
        .bind(by)
        .bind(time)
        .bind(time)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE runs SET open_incidents = CASE WHEN open_incidents > 0 THEN open_incidents - 1 \
         ELSE 0 END WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    one(&mut *tx, run_id, id).await
}

/// One incident of a run.
pub async fn one(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
    id: i64,
) -> StoreResult<Incident> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM incidents WHERE run_id = $1 AND id = $2"
    );
    let row = sqlx::query(sql)
        .bind(run_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| from_row(&r))
        .ok_or_else(|| StoreError::NotFound(format!("incident {id} of run {run_id}")))
}

/// A run's incidents, oldest first; with `open`, only those not yet acknowledged.
pub async fn list(
    db: impl Executor<'_, Database = Db>,
    run_id: i64,
    open: bool,
) -> StoreResult<Vec<Incident>> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM incidents WHERE run_id = $1 AND (NOT $2 OR acked_at IS NULL) ORDER BY id"
    );
    let rows = sqlx::query(sql)
        .bind(run_id)
        .bind(open)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(from_row).collect())
}
