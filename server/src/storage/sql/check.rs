//! The SQL of `keel check` (see [`crate::storage::check`]): steps streamed branch by branch,
//! each recomputed bucket compared with the stored one, repairs written in one transaction.

use futures_util::TryStreamExt;

use super::Conn;
use crate::storage::check::{Key, Report, Walk, agrees};
use crate::storage::summary::Summary;

/// Walks every (run, branch) that has steps or summaries; with `repair` (a transaction),
/// rewrites what disagrees there.
pub async fn walk_all(
    steps: &mut Conn,
    stored: &mut Conn,
    mut repair: Option<&mut Conn>,
) -> anyhow::Result<Report> {
    let branches: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT DISTINCT run_id, branch FROM steps
         UNION SELECT DISTINCT run_id, branch FROM summaries ORDER BY 1, 2",
    )
    .fetch_all(&mut *stored)
    .await?;
    let mut report = Report::default();
    for (run, branch) in branches {
        let mut walk = Walk::new(run, branch);
        {
            let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
                "SELECT step, data FROM steps WHERE run_id = $1 AND branch = $2 ORDER BY step",
            )
            .bind(run)
            .bind(branch)
            .fetch(&mut *steps);
            while let Some((step, data)) = rows.try_next().await? {
                report.steps += 1;
                for done in walk.add(step as u64, &data) {
                    judge(&walk, stored, repair.as_deref_mut(), done, &mut report).await?;
                }
            }
        }
        for done in walk.finish() {
            judge(&walk, stored, repair.as_deref_mut(), done, &mut report).await?;
        }
        extras(&walk, stored, repair.as_deref_mut(), &mut report).await?;
        report.branches += 1;
    }
    Ok(report)
}

/// Compares one recomputed bucket with the stored one; rewrites it when repairing.
async fn judge(
    walk: &Walk,
    stored: &mut Conn,
    repair: Option<&mut Conn>,
    (key, want, abs): (Key, Summary, Vec<f64>),
    report: &mut Report,
) -> anyhow::Result<()> {
    report.buckets += 1;
    let (series, level, bucket) = key;
    let row: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM summaries
         WHERE run_id = $1 AND branch = $2 AND series_id = $3 AND level = $4 AND bucket = $5",
    )
    .bind(walk.run)
    .bind(walk.branch)
    .bind(i64::from(series))
    .bind(level as i64)
    .bind(bucket as i64)
    .fetch_optional(&mut *stored)
    .await?;
    let verdict = match row.as_deref().map(Summary::decode) {
        None => Some("missing"),
        Some(Some(got)) if agrees(&got, &want, &abs) => None,
        Some(_) => Some("wrong"),
    };
    let Some(verdict) = verdict else {
        return Ok(());
    };
    match verdict {
        "missing" => report.missing += 1,
        _ => report.wrong += 1,
    }
    report.example(|| {
        format!(
            "run {} branch {}: series {series}, the {level}-step bucket from step {} is {verdict}",
            walk.run,
            walk.branch,
            bucket * level
        )
    });
    if let Some(conn) = repair {
        sqlx::query(
            "INSERT INTO summaries (run_id, branch, series_id, level, bucket, data)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (run_id, branch, series_id, level, bucket) DO UPDATE SET data = excluded.data",
        )
        .bind(walk.run)
        .bind(walk.branch)
        .bind(i64::from(series))
        .bind(level as i64)
        .bind(bucket as i64)
        .bind(want.encode())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Stored buckets that no step of the branch falls in; deleted when repairing.
async fn extras(
    walk: &Walk,
    stored: &mut Conn,
    mut repair: Option<&mut Conn>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let keys: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT series_id, level, bucket FROM summaries WHERE run_id = $1 AND branch = $2",
    )
    .bind(walk.run)
    .bind(walk.branch)
    .fetch_all(&mut *stored)
    .await?;
    for (series, level, bucket) in keys {
        let series = series as u32;
        if walk.seen.contains(&(series, level as u64, bucket as u64)) {
            continue;
        }
        report.extra += 1;
        report.example(|| {
            format!(
                "run {} branch {}: series {series}, the {level}-step bucket from step {} has no steps",
                walk.run,
                walk.branch,
                bucket * level
            )
        });
        if let Some(conn) = repair.as_deref_mut() {
            sqlx::query(
                "DELETE FROM summaries WHERE run_id = $1 AND branch = $2 AND series_id = $3
                 AND level = $4 AND bucket = $5",
            )
            .bind(walk.run)
            .bind(walk.branch)
            .bind(i64::from(series))
            .bind(level)
            .bind(bucket)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}
