//! Commands: issued, taken by the trainer's poll, and their outcomes.

use super::*;

impl Writer {
    pub(super) async fn add_command(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        command: keel_protocol::Command,
        issued_by: String,
        changes: &mut Vec<Change>,
    ) -> StoreResult<CommandRecord> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        if run.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "run {run_id} is {} and takes no more commands",
                run.status.as_str()
            )));
        }
        let t = now();
        let body = serde_json::to_string(&command).map_err(anyhow::Error::from)?;
        let id = sqlx::query(
            "INSERT INTO commands (run_id, body, status, issued_by, created_at, updated_at)
             VALUES ($1, $2, 'queued', $3, $4, $5) RETURNING id",
        )
        .bind(run_id)
        .bind(body)
        .bind(&issued_by)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>("id");
        let record = runs::command(&mut *tx, run_id, id).await?;
        self.audit(tx, &record, changes).await?;
        Ok(record)
    }

    pub(super) async fn take_commands(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        changes: &mut Vec<Change>,
    ) -> StoreResult<Vec<CommandRecord>> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        // A trainer asking for commands is alive.
        sqlx::query("UPDATE runs SET seen_at = $1 WHERE id = $2")
            .bind(now())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if run.status == RunStatus::Lost {
            self.set_status(tx, run_id, RunStatus::Running, None, changes)
                .await?;
        }
        let open = runs::open_commands(&mut *tx, run_id).await?;
        let mut out = Vec::with_capacity(open.len());
        for mut command in open {
            if command.status == CommandStatus::Queued {
                command.status = CommandStatus::Delivered;
                command.updated_at = now();
                sqlx::query(
                    "UPDATE commands SET status = 'delivered', updated_at = $1 WHERE id = $2",
                )
                .bind(command.updated_at)
                .bind(command.id)
                .execute(&mut *tx)
                .await?;
                self.audit(tx, &command, changes).await?;
            }
            out.push(command);
        }
        Ok(out)
    }

    pub(super) async fn outcome(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        id: i64,
        outcome: CommandOutcome,
        changes: &mut Vec<Change>,
    ) -> StoreResult<CommandRecord> {
        let mut command = runs::command(&mut *tx, run_id, id).await?;
        if !outcome.status.is_final() {
            return Err(StoreError::Invalid(
                "an outcome is `applied` or `rejected`".into(),
            ));
        }
        if command.status.is_final() {
            // Reported twice (a retry after a lost answer): the first report stands.
            return Ok(command);
        }
        command.status = outcome.status;
        command.applied_step = outcome.step;
        command.message = outcome.message;
        command.updated_at = now();
        sqlx::query(
            "UPDATE commands SET status = $1, applied_step = $2, message = $3, updated_at = $4
             WHERE id = $5",
        )
        .bind(command.status.as_str())
        .bind(command.applied_step.map(|s| s as i64))
        .bind(&command.message)
        .bind(command.updated_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.audit(tx, &command, changes).await?;
        Ok(command)
    }
}
