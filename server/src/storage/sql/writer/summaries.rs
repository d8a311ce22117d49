//! Summaries: every bucket a new step falls in, at every level, merged and rewritten in
//! the step's transaction; the newest bucket per series and level is kept in memory.

use super::*;

impl Writer {
    /// The stored summary of one bucket: from the tail cache, else from the table.
    pub(super) async fn bucket(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        branch: u32,
        (series, level, bucket): (u32, u64, u64),
    ) -> StoreResult<Option<Summary>> {
        // Only a hit is trusted: the cache cannot know that a later bucket has no row (one
        // written before a restart or an eviction, or by a re-sent spill, is not in it).
        if let Some(s) = self.tails.get((run_id, branch, series, level), bucket) {
            return Ok(Some(s.clone()));
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT data FROM summaries
             WHERE run_id = $1 AND branch = $2 AND series_id = $3 AND level = $4 AND bucket = $5",
        )
        .bind(run_id)
        .bind(i64::from(branch))
        .bind(i64::from(series))
        .bind(level as i64)
        .bind(bucket as i64)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.and_then(|(data,)| Summary::decode(&data)))
    }

    pub(super) async fn write_buckets(
        &mut self,
        tx: &mut Conn,
        run_id: i64,
        branch: u32,
        dirty: HashMap<(u32, u64, u64), Summary>,
    ) -> StoreResult<()> {
        let mut rows = Vec::with_capacity(dirty.len());
        for ((series, level, bucket), summary) in dirty {
            rows.push((series, level as i64, bucket as i64, summary.encode()));
            self.tails
                .record((run_id, branch, series, level), bucket, summary);
        }
        // Many rows per statement: the per-statement cost dominates otherwise.
        for chunk in rows.chunks(150) {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO summaries (run_id, branch, series_id, level, bucket, data) ",
            );
            q.push_values(chunk, |mut b, (series, level, bucket, data)| {
                b.push_bind(run_id)
                    .push_bind(i64::from(branch))
                    .push_bind(i64::from(*series))
                    .push_bind(*level)
                    .push_bind(*bucket)
                    .push_bind(data.as_slice());
            });
            q.push(
                " ON CONFLICT (run_id, branch, series_id, level, bucket) \
                 DO UPDATE SET data = excluded.data",
            );
            q.build().execute(&mut *tx).await?;
        }
        Ok(())
    }
}

/// (run, branch, series, level).
type TailKey = (i64, u32, u32, u64);

/// The newest bucket written of each series and level, so that streaming steps, which land
/// in the newest bucket, read it back from memory. Only a hit on that very bucket is an
/// answer: for any other bucket the table is asked.
#[derive(Default)]
pub(super) struct Tails {
    newest: HashMap<TailKey, (u64, Summary)>,
}

impl Tails {
    /// Tails kept before the cache is emptied (it refills from the table as steps come).
    const MAX: usize = 50_000;

    pub(super) fn get(&self, key: TailKey, bucket: u64) -> Option<&Summary> {
        match self.newest.get(&key) {
            Some((b, s)) if *b == bucket => Some(s),
            _ => None,
        }
    }

    /// `summary` was written for `bucket`: kept when no newer bucket of its key is.
    pub(super) fn record(&mut self, key: TailKey, bucket: u64, summary: Summary) {
        if self.newest.len() >= Self::MAX && !self.newest.contains_key(&key) {
            self.newest.clear();
        }
        match self.newest.get_mut(&key) {
            Some(tail) if bucket < tail.0 => {}
            Some(tail) => *tail = (bucket, summary),
            None => {
                self.newest.insert(key, (bucket, summary));
            }
        }
    }

    /// Forgets everything (a transaction failed: what it wrote is not in the table).
    pub(super) fn clear(&mut self) {
        self.newest.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.newest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(x: f64) -> Summary {
        Summary::of(0, &[x])
    }

    #[test]
    fn only_the_newest_bucket_of_a_key_is_answered() {
        let mut t = Tails::default();
        let key = (1, 0, 7, 16);
        t.record(key, 3, summary(1.0));
        assert_eq!(t.get(key, 3), Some(&summary(1.0)));
        // Another bucket, or another key, is the table's to answer.
        assert_eq!(t.get(key, 2), None);
        assert_eq!(t.get((1, 1, 7, 16), 3), None);
        t.record(key, 4, summary(2.0));
        assert_eq!(t.get(key, 3), None);
        assert_eq!(t.get(key, 4), Some(&summary(2.0)));
    }

    #[test]
    fn an_older_bucket_written_late_does_not_replace_the_newest() {
        let mut t = Tails::default();
        let key = (1, 0, 7, 16);
        t.record(key, 9, summary(1.0));
        t.record(key, 5, summary(2.0)); // a re-sent spill, say
        assert_eq!(t.get(key, 9), Some(&summary(1.0)));
        assert_eq!(t.get(key, 5), None);
        t.record(key, 9, summary(3.0));
        assert_eq!(t.get(key, 9), Some(&summary(3.0)));
    }

    #[test]
    fn a_full_cache_is_emptied_before_it_takes_a_new_key() {
        let mut t = Tails::default();
        for series in 0..Tails::MAX as u32 {
            t.record((1, 0, series, 16), 0, summary(1.0));
        }
        assert_eq!(t.len(), Tails::MAX);
        // An update of a key it holds keeps everything…
        t.record((1, 0, 0, 16), 1, summary(2.0));
        assert_eq!(t.len(), Tails::MAX);
        // …a new key starts afresh.
        t.record((2, 0, 0, 16), 0, summary(3.0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get((2, 0, 0, 16), 0), Some(&summary(3.0)));
    }
}
