//! Events, statuses, incidents, rules that fire on alerts, and the audit log.

use super::*;

impl Writer {
    /// Replaces one of a run's settings (`rules` or `thresholds`, columns of `runs`) and says
    /// so in its events: who, and what it is now.
    pub(super) async fn set_setting(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        setting: &'static str,
        text: String,
        by: &str,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let sql = match setting {
            "rules" => "UPDATE runs SET rules = $1, rules_by = $2 WHERE id = $3",
            _ => "UPDATE runs SET thresholds = $1, thresholds_by = $2 WHERE id = $3",
        };
        sqlx::query(sql)
            .bind(&text)
            .bind(by)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let event = NewEvent {
            run_id,
            kind: "settings".into(),
            name: setting.into(),
            severity: Severity::Info,
            step: run.last_step,
            message: format!("{setting} set by {by}: {text}"),
        };
        self.insert_event(tx, event, changes).await?;
        Ok(())
    }

    pub(super) async fn ack_incident(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        id: i64,
        by: &str,
        changes: &mut Vec<Change>,
    ) -> StoreResult<keel_protocol::Incident> {
        let incident = incidents::acknowledge(tx, run_id, id, by, now()).await?;
        let event = NewEvent {
            run_id,
            kind: "incident".into(),
            name: "acknowledged".into(),
            severity: Severity::Info,
            step: Some(incident.start_step),
            message: format!(
                "incident {id} ({}, steps {}–{}) acknowledged by {by}",
                incident.name, incident.start_step, incident.end_step
            ),
        };
        self.insert_event(tx, event, changes).await?;
        Ok(incident)
    }

    /// The `stalled` alert already stored for this stall (the run and its last step): the
    /// watchdog of every server on a shared database sees the same stall, and it is told once.
    pub(super) async fn told_already(
        &self,
        tx: &mut Conn,
        e: &NewEvent,
    ) -> StoreResult<Option<EventRecord>> {
        if (e.kind.as_str(), e.name.as_str()) != ("alert", "stalled") {
            return Ok(None);
        }
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM events WHERE run_id = $1 AND kind = 'alert' AND name = 'stalled'
             AND step IS NOT DISTINCT FROM $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(e.run_id)
        .bind(e.step.map(|s| s as i64))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else { return Ok(None) };
        Ok(runs::events(&mut *tx, e.run_id, id - 1, 1).await?.pop())
    }

    /// Stores an event; an alert (of `size`, see [`crate::alerts::Alert::size`]) then joins
    /// its incident and fires the run's rules that are on it.
    pub(super) async fn add_event(
        &mut self,
        tx: &mut Conn,
        e: NewEvent,
        size: f64,
        changes: &mut Vec<Change>,
    ) -> StoreResult<EventRecord> {
        let record = self.insert_event(tx, e, changes).await?;
        if record.kind == "alert" {
            let (incident, new) = incidents::note(tx, &record, size).await?;
            if new {
                let run_id = record.run_id;
                self.notify(tx, run_id, |run| Notice::Incident { run, incident })
                    .await?;
            }
            self.fire_rules(tx, &record, changes).await?;
        }
        Ok(record)
    }

    /// The rules of the run that are on this alert, each issuing its command unless it is in
    /// its cooldown or has fired its most; a `rule` event records each firing (its step is
    /// the alert's, which is how cooldowns and counts survive a restart).
    async fn fire_rules(
        &mut self,
        tx: &mut Conn,
        alert: &EventRecord,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let rules = runs::rules(&mut *tx, alert.run_id).await?;
        let by: Option<String> =
            sqlx::query_scalar("SELECT COALESCE(rules_by, created_by) FROM runs WHERE id = $1")
                .bind(alert.run_id)
                .fetch_one(&mut *tx)
                .await?;
        let set_by = by.map(|b| format!(", set by {b}")).unwrap_or_default();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.on == alert.name) {
            let name = format!("rule:{i}");
            let (fired, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MAX(step) FROM events WHERE run_id = $1 AND kind = 'rule' AND name = $2",
            )
            .bind(alert.run_id)
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
            if rule.max_firings.is_some_and(|m| fired >= i64::from(m)) {
                continue;
            }
            let step = alert.step.unwrap_or(0);
            if last.is_some_and(|l| step < l as u64 + rule.cooldown_steps) {
                continue;
            }
            // A rewind without a step goes back to the newest checkpoint before the alert.
            let mut action = rule.action.clone();
            if let keel_protocol::Command::Rewind {
                to_step: None,
                before_step: before @ None,
                ..
            } = &mut action
            {
                *before = alert.step;
            }
            let issued = self
                .add_command(tx, alert.run_id, action, name.clone(), changes)
                .await;
            let message = match issued {
                Ok(c) => format!(
                    "rule {i} (on {}{set_by}) issued {} as command {}",
                    rule.on,
                    rule.action.kind(),
                    c.id
                ),
                // A run that has ended takes no commands: the firing is still told.
                Err(StoreError::Conflict(why)) => {
                    format!("rule {i} (on {}{set_by}) could not act: {why}", rule.on)
                }
                Err(e) => return Err(e),
            };
            let event = NewEvent {
                run_id: alert.run_id,
                kind: "rule".into(),
                name,
                severity: Severity::Info,
                step: alert.step,
                message,
            };
            let event = self.insert_event(tx, event, changes).await?;
            self.notify(tx, alert.run_id, |run| Notice::Rule { run, event })
                .await?;
        }
        Ok(())
    }

    async fn insert_event(
        &mut self,
        tx: &mut Conn,
        e: NewEvent,
        changes: &mut Vec<Change>,
    ) -> StoreResult<EventRecord> {
        let time = now();
        let id = sqlx::query(
            "INSERT INTO events (run_id, kind, name, severity, step, message, time)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(e.run_id)
        .bind(&e.kind)
        .bind(&e.name)
        .bind(runs::severity_str(e.severity))
        .bind(e.step.map(|s| s as i64))
        .bind(&e.message)
        .bind(time)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>("id");
        if e.kind == "alert" {
            sqlx::query("UPDATE runs SET alerts = alerts + 1 WHERE id = $1")
                .bind(e.run_id)
                .execute(&mut *tx)
                .await?;
        }
        self.cursor.event = id;
        let record = EventRecord {
            id,
            run_id: e.run_id,
            kind: e.kind,
            name: e.name,
            severity: e.severity,
            step: e.step,
            message: e.message,
            time,
        };
        changes.push(crate::storage::event_change(self.cursor, record.clone()));
        Ok(record)
    }

    pub(super) async fn set_status(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        status: RunStatus,
        message: Option<String>,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let t = now();
        if run.status == status {
            // Nothing changes, but a trainer that says so is alive.
            sqlx::query("UPDATE runs SET seen_at = $1 WHERE id = $2")
                .bind(t)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
        sqlx::query("UPDATE runs SET status = $1, updated_at = $2, seen_at = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(t)
            .bind(if status == RunStatus::Lost {
                run.seen_at
            } else {
                t
            })
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let severity = match status {
            RunStatus::Failed | RunStatus::Lost => Severity::Warning,
            _ => Severity::Info,
        };
        let event = NewEvent {
            run_id,
            kind: "status".into(),
            name: status.as_str().into(),
            severity,
            step: run.last_step,
            message: message.unwrap_or_else(|| format!("the run is {}", status.as_str())),
        };
        self.add_event(tx, event, 0.0, changes).await?;
        let message = LiveMessage::Status {
            status,
            branch: run.branch,
        };
        changes.push(self.change(run_id, message));
        Ok(())
    }

    /// Every state of every command is an event: that is the audit log.
    pub(super) async fn audit(
        &mut self,
        tx: &mut Conn,
        command: &CommandRecord,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let kind = command.command.kind();
        let message = match (command.status, command.applied_step, &command.message) {
            (CommandStatus::Applied, Some(step), _) => format!("{kind} applied at step {step}"),
            (CommandStatus::Rejected, _, Some(why)) => format!("{kind} rejected: {why}"),
            (status, _, _) => format!("{kind} {} by {}", status.as_str(), command.issued_by),
        };
        let event = NewEvent {
            run_id: command.run_id,
            kind: "command".into(),
            name: format!("{kind}:{}", command.status.as_str()),
            severity: Severity::Info,
            step: command.applied_step,
            message,
        };
        self.insert_event(tx, event, changes).await?;
        changes.push(crate::storage::command_change(
            command.run_id,
            self.cursor,
            command.clone(),
        ));
        Ok(())
    }
}
