//! Steps: a batch checked against what is stored, its branch resolved, the fresh steps
//! written with their series, judged by the run's alert detectors and published.

use super::*;

impl Writer {
    pub(super) async fn ingest(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        batch: IngestBatch,
        changes: &mut Vec<Change>,
    ) -> StoreResult<IngestReply> {
        let run = runs::run_row(&mut *tx, run_id).await?;
        let branch = resolve_branch(tx, &run, &batch).await?;
        let total = batch.steps.len() as u64;
        let fresh = fresh_steps(tx, run_id, branch, batch.steps).await?;
        self.store_steps(tx, run_id, branch, &fresh).await?;
        self.note_steps(tx, &run, branch, &fresh).await?;
        if run.status == RunStatus::Lost && !fresh.is_empty() {
            let back = Some("the trainer is sending steps again".to_owned());
            self.set_status(tx, run_id, RunStatus::Running, back, changes)
                .await?;
        }
        let reply = IngestReply {
            accepted: fresh.len() as u64,
            duplicates: total - fresh.len() as u64,
            branch,
        };
        self.publish_steps(tx, &run, branch, fresh, changes).await?;
        Ok(reply)
    }

    /// Writes the steps, each with the next arrival number, and every summary bucket they
    /// fall in at every level, merged with what the bucket held.
    async fn store_steps(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        branch: u32,
        fresh: &[StepRecord],
    ) -> StoreResult<()> {
        let mut dirty: HashMap<(u32, u64, u64), Summary> = HashMap::new();
        let mut rows = Vec::with_capacity(fresh.len());
        for record in fresh {
            self.cursor.seq += 1;
            let entries = self.entries(tx, run_id, record).await?;
            let mut blob = Vec::with_capacity(entries.iter().map(|e| 8 + 8 * e.1.len()).sum());
            for (id, values) in &entries {
                codec::put_entry(&mut blob, *id, values);
                for level in LEVELS {
                    let key = (*id, level, record.step / level);
                    if let Some(s) = dirty.get_mut(&key) {
                        s.add(record.step, values);
                    } else {
                        let merged = match self.bucket(tx, run_id, branch, key).await? {
                            Some(mut s) => {
                                s.add(record.step, values);
                                s
                            }
                            None => Summary::of(record.step, values),
                        };
                        dirty.insert(key, merged);
                    }
                }
            }
            rows.push((record.step as i64, self.cursor.seq, blob));
        }
        insert_steps(tx, run_id, branch, rows).await?;
        self.write_buckets(tx, run_id, branch, dirty).await
    }

    /// The stored steps go out on the live channel, then the alerts they raised.
    async fn publish_steps(
        &mut self,
        tx: &mut Conn,
        run: &runs::RunRow,
        branch: u32,
        fresh: Vec<StepRecord>,
        changes: &mut Vec<Change>,
    ) -> StoreResult<()> {
        let alerts = self.judge(tx, run, branch, &fresh).await?;
        if !fresh.is_empty() {
            let message = LiveMessage::Steps {
                branch,
                steps: fresh,
            };
            changes.push(self.change(run.id, message));
        }
        // Alerts follow the steps they are about, on the live channel too.
        for a in alerts {
            let event = NewEvent {
                run_id: run.id,
                kind: "alert".into(),
                name: a.name.into(),
                severity: a.severity,
                step: Some(a.step),
                message: a.message,
            };
            self.add_event(tx, event, a.size, changes).await?;
        }
        Ok(())
    }

    /// Runs the new steps of a branch (stored just now, the last arrivals) through its alert
    /// detector, in step order; first, when other servers wrote to the database meanwhile,
    /// the steps they stored in the branch since the detector last looked.
    async fn judge(
        &mut self,
        tx: &mut Conn,
        run: &runs::RunRow,
        branch: u32,
        fresh: &[StepRecord],
    ) -> StoreResult<Vec<Alert>> {
        if self.detectors.len() > MAX_DETECTORS {
            self.detectors.clear();
        }
        let first = self.cursor.seq - fresh.len() as i64 + 1;
        let thresholds = || {
            let config = serde_json::from_str(&run.config).unwrap_or_default();
            let set = run
                .thresholds
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok());
            set.unwrap_or_else(|| Thresholds::from_config(&config))
        };
        let judge = self
            .detectors
            .entry((run.id, branch))
            .or_insert_with(|| Judge {
                detector: Detector::new(thresholds()),
                seen: first - 1,
                behind: false,
            });
        if judge.behind {
            let missed = (judge.seen, first);
            for r in runs::steps_between(tx, run.id, branch, missed, CATCH_UP).await? {
                judge.detector.observe(&r);
            }
            // Thresholds set through another server are in force here from now on too.
            judge.detector.set_thresholds(thresholds());
            judge.behind = false;
        }
        judge.seen = self.cursor.seq;
        let mut ordered: Vec<&StepRecord> = fresh.iter().collect();
        ordered.sort_by_key(|r| r.step);
        Ok(ordered
            .into_iter()
            .flat_map(|r| judge.detector.observe(r))
            .collect())
    }

    /// The series of one step as (series id, values), registering new series on first sight.
    async fn entries(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        record: &StepRecord,
    ) -> StoreResult<Vec<(u32, Vec<f64>)>> {
        let mut out = Vec::with_capacity(record.scalars.len() + record.layers.len() + 2);
        let mut implicit = Vec::new();
        if let Some(time) = record.time {
            implicit.push(("time", time));
        }
        if let Some(tokens) = record.tokens {
            implicit.push(("tokens", tokens as f64));
        }
        let scalars = record.scalars.iter().map(|(k, v)| (k.as_str(), v.get()));
        for (name, value) in implicit.into_iter().chain(scalars) {
            let id = self.series_id(tx, run_id, false, name, 1).await?;
            out.push((id, vec![value]));
        }
        for (name, values) in &record.layers {
            let id = self.series_id(tx, run_id, true, name, values.len()).await?;
            out.push((id, values.iter().map(|v| v.get()).collect()));
        }
        Ok(out)
    }

    async fn series_id(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        layer: bool,
        name: &str,
        width: usize,
    ) -> StoreResult<u32> {
        let map = match self.series.entry(run_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let known = runs::series_of(&mut *tx, run_id).await?;
                let map = known
                    .into_iter()
                    .map(|s| ((s.layer, s.name), (s.id, s.width)));
                e.insert(map.collect())
            }
        };
        if let Some(&(id, known_width)) = map.get(&(layer, name.to_owned())) {
            if known_width != width {
                return Err(StoreError::Invalid(format!(
                    "`{name}` has {width} values where earlier steps had {known_width}"
                )));
            }
            return Ok(id);
        }
        let id = map.len() as u32;
        sqlx::query(
            "INSERT INTO series (run_id, id, kind, name, width) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(i64::from(id))
        .bind(if layer { "layer" } else { "scalar" })
        .bind(name)
        .bind(width as i64)
        .execute(&mut *tx)
        .await?;
        map.insert((layer, name.to_owned()), (id, width));
        Ok(id)
    }

    /// Updates the run's row after new steps: newest step, loss, tokens, life signs.
    async fn note_steps(
        &mut self,
        tx: &mut Conn,
        run: &runs::RunRow,
        branch: u32,
        fresh: &[StepRecord],
    ) -> StoreResult<()> {
        // Steps of an abandoned branch (a late re-send) do not move the run's newest step.
        let live = branch >= run.branch;
        let newest = fresh.iter().filter(|_| live).max_by_key(|r| r.step);
        let (mut last_step, mut last_loss, mut tokens) = (run.last_step, run.last_loss, run.tokens);
        if let Some(r) = newest
            && last_step.is_none_or(|s| r.step >= s || branch > run.branch)
        {
            last_step = Some(r.step);
            if let Some(loss) = r.scalars.get("loss") {
                last_loss = Some(loss.get());
            }
            tokens = r.tokens.or(tokens);
        }
        let t = now();
        sqlx::query(
            "UPDATE runs SET last_step = $1, last_loss = $2, tokens = $3, steps = steps + $4, seq = $5,
             updated_at = $6, seen_at = $7 WHERE id = $8",
        )
        .bind(last_step.map(|s| s as i64))
        .bind(last_loss.map(codec::f64_blob))
        .bind(tokens.map(|t| t as i64))
        .bind(fresh.len() as i64)
        .bind(self.cursor.seq)
        .bind(t)
        .bind(t)
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(super) async fn create_run(tx: &mut Conn, spec: &RunSpec, by: &str) -> StoreResult<i64> {
    let t = now();
    let id = sqlx::query(
        "INSERT INTO runs (name, grp, variant, tags, config, layers, ranks, status, created_at, updated_at, seen_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $9, $10, $11) RETURNING id",
    )
    .bind(&spec.name)
    .bind(&spec.group)
    .bind(&spec.variant)
    .bind(serde_json::to_string(&spec.tags).map_err(anyhow::Error::from)?)
    .bind(spec.config.to_string())
    .bind(i64::from(spec.layers))
    .bind(spec.ranks.map(i64::from))
    .bind(t)
    .bind(t)
    .bind(t)
    .bind(by)
    .fetch_one(&mut *tx)
    .await?
    .get::<i64, _>("id");
    sqlx::query("INSERT INTO branches (run_id, branch, created_at) VALUES ($1, 0, $2)")
        .bind(id)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// The branch a batch goes to. Naming the branch after the live one starts it (a rewind):
/// it forks from its parent just before the batch's first step.
async fn resolve_branch(
    tx: &mut Conn,
    run: &runs::RunRow,
    batch: &IngestBatch,
) -> StoreResult<u32> {
    let Some(branch) = batch.branch else {
        return Ok(run.branch);
    };
    if branch <= run.branch {
        return Ok(branch);
    }
    if branch != run.branch + 1 {
        return Err(StoreError::Conflict(format!(
            "branch {branch} does not exist; the live branch is {}",
            run.branch
        )));
    }
    let first = batch.steps.iter().map(|s| s.step).min().unwrap_or(0);
    sqlx::query(
        "INSERT INTO branches (run_id, branch, parent, fork_step, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run.id)
    .bind(i64::from(branch))
    .bind(i64::from(run.branch))
    .bind(first.checked_sub(1).map(|s| s as i64))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE runs SET branch = $1 WHERE id = $2")
        .bind(i64::from(branch))
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
    Ok(branch)
}

/// Inserts raw step rows (step, seq, blob), many per statement.
async fn insert_steps(
    tx: &mut Conn,
    run_id: i64,
    branch: u32,
    rows: Vec<(i64, i64, Vec<u8>)>,
) -> StoreResult<()> {
    for chunk in rows.chunks(150) {
        let mut q = QueryBuilder::<Db>::new("INSERT INTO steps (run_id, branch, step, seq, data) ");
        q.push_values(chunk, |mut b, (step, seq, data)| {
            b.push_bind(run_id)
                .push_bind(i64::from(branch))
                .push_bind(*step)
                .push_bind(*seq)
                .push_bind(data.as_slice());
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// The steps of a batch not stored on the branch yet, each once (the first of the batch wins).
async fn fresh_steps(
    tx: &mut Conn,
    run_id: i64,
    branch: u32,
    steps: Vec<StepRecord>,
) -> StoreResult<Vec<StepRecord>> {
    let existing = existing_steps(tx, run_id, branch, &steps).await?;
    let mut seen = HashSet::with_capacity(steps.len());
    Ok(steps
        .into_iter()
        .filter(|r| !existing.contains(&r.step) && seen.insert(r.step))
        .collect())
}

async fn existing_steps(
    tx: &mut Conn,
    run_id: i64,
    branch: u32,
    steps: &[StepRecord],
) -> StoreResult<HashSet<u64>> {
    let (Some(lo), Some(hi)) = (
        steps.iter().map(|s| s.step).min(),
        steps.iter().map(|s| s.step).max(),
    ) else {
        return Ok(HashSet::new());
    };
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT step FROM steps WHERE run_id = $1 AND branch = $2 AND step BETWEEN $3 AND $4",
    )
    .bind(run_id)
    .bind(i64::from(branch))
    .bind(lo as i64)
    .bind(hi as i64)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(s,)| s as u64).collect())
}
