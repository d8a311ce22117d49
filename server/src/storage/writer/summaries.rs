//! Summaries: every bucket a new step falls in, at every level, merged and rewritten in
//! the step's transaction; the newest bucket per series and level is kept in memory.

use super::*;

impl Writer {
    /// The stored summary of one bucket: from the tail cache, else from the table.
    pub(super) async fn bucket(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        branch: u32,
        (series, level, bucket): (u32, u64, u64),
    ) -> StoreResult<Option<Summary>> {
        // Only a hit is trusted: the cache cannot know that a later bucket has no row (one
        // written before a restart or an eviction, or by a re-sent spill, is not in it).
        if let Some((b, s)) = self.tails.get(&(run_id, branch, series, level))
            && *b == bucket
        {
            return Ok(Some(s.clone()));
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT data FROM summaries
             WHERE run_id = ? AND branch = ? AND series_id = ? AND level = ? AND bucket = ?",
        )
        .bind(run_id)
        .bind(branch)
        .bind(series)
        .bind(level as i64)
        .bind(bucket as i64)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.and_then(|(data,)| Summary::decode(&data)))
    }

    pub(super) async fn write_buckets(
        &mut self,
        tx: &mut SqliteConnection,
        run_id: i64,
        branch: u32,
        dirty: HashMap<(u32, u64, u64), Summary>,
    ) -> StoreResult<()> {
        if self.tails.len() > MAX_TAILS {
            self.tails.clear();
        }
        let mut rows = Vec::with_capacity(dirty.len());
        for ((series, level, bucket), summary) in dirty {
            rows.push((series, level as i64, bucket as i64, summary.encode()));
            let tail = self.tails.entry((run_id, branch, series, level));
            let tail = tail.or_insert((bucket, summary.clone()));
            if bucket >= tail.0 {
                *tail = (bucket, summary);
            }
        }
        // Many rows per statement: the per-statement cost dominates otherwise.
        for chunk in rows.chunks(150) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO summaries (run_id, branch, series_id, level, bucket, data) ",
            );
            q.push_values(chunk, |mut b, (series, level, bucket, data)| {
                b.push_bind(run_id)
                    .push_bind(branch)
                    .push_bind(*series)
                    .push_bind(*level)
                    .push_bind(*bucket)
                    .push_bind(data.as_slice());
            });
            q.build().execute(&mut *tx).await?;
        }
        Ok(())
    }
}
