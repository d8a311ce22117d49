//! `keel backup`: a consistent copy of a live SQLite database.
//!
//! SQLite's `VACUUM INTO` writes the database as one read transaction sees it — a snapshot —
//! into a new file, compacted, while the server goes on writing (in WAL mode a reader blocks no
//! writer). The copy is written beside its destination under a temporary name and renamed when
//! it is complete and has passed SQLite's integrity check, so the destination is either the
//! whole copy or absent. (SQLite's page-by-page backup API would need `unsafe` FFI, which this
//! workspace forbids, and restarts whenever another process writes, as a streaming server
//! does; `VACUUM INTO` gives the same consistency in one pass.)

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

/// What a backup holds, read back from the copy.
#[derive(Debug)]
pub struct Backup {
    pub bytes: u64,
    pub runs: i64,
    pub steps: i64,
}

/// Copies the database at `db` to `out`, which must not exist.
pub async fn backup(db: &Path, out: &Path) -> anyhow::Result<Backup> {
    anyhow::ensure!(
        db.is_file(),
        "there is no database at {} (--db names a SQLite file keel serves)",
        db.display()
    );
    anyhow::ensure!(
        !out.exists(),
        "{} exists already: give --out a new file (a backup never overwrites one)",
        out.display()
    );
    let partial = partial(out);
    let _ = std::fs::remove_file(&partial);
    let result = copy(db, out, &partial).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

async fn copy(db: &Path, out: &Path, partial: &Path) -> anyhow::Result<Backup> {
    let mut source = SqliteConnectOptions::from_str("sqlite://")?
        .filename(db)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let target = partial
        .to_str()
        .context("the --out path is not valid UTF-8")?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut source)
        .await
        .with_context(|| format!("copying {} to {}", db.display(), partial.display()))?;
    source.close().await?;

    // The copy comes out in rollback-journal mode: made a WAL database like its original, it
    // is ready to serve (and `keel check` opens it read-only).
    let mut copy = SqliteConnectOptions::from_str("sqlite://")?
        .filename(partial)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await?;
    anyhow::ensure!(
        check == "ok",
        "the copy fails SQLite's integrity check: {check}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
        .fetch_one(&mut copy)
        .await?;
    let steps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps")
        .fetch_one(&mut copy)
        .await?;
    copy.close().await?;
    std::fs::rename(partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    let bytes = std::fs::metadata(out)?.len();
    Ok(Backup { bytes, runs, steps })
}

/// `<out>.partial`, where the copy is written until it is complete.
fn partial(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}
