//! One server per database file. Two servers on one file would each keep their own caches
//! of the newest buckets and rewrite each other's summaries, so the writer holds an exclusive
//! advisory lock on `<db>.lock` for as long as it runs, and a second server (or a `keel check
//! --repair`) refuses to start while it is held. The file names the process holding it, for
//! the message; the lock itself goes with the process, however it ends (SIGKILL included).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Held while it lives.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of `db`, or says who holds it.
pub fn acquire(db: &Path) -> anyhow::Result<DbLock> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            writeln!(file, "pid {}", std::process::id())?;
            Ok(DbLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let by = if holder.is_empty() {
                String::new()
            } else {
                format!(" ({holder})")
            };
            anyhow::bail!(
                "the database {} is in use by another keel process{by}: stop it first, \
                 or give this one another --db",
                db.display()
            )
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Held while migrations run on `db`: a server starting and a `keel users` beside it would
/// otherwise both apply the same migration. Waits for whoever holds it.
pub fn migrating(db: &Path) -> anyhow::Result<File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".migrate-lock");
    let path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keel.db");
        let first = acquire(&db).unwrap();
        let e = format!("{:#}", acquire(&db).unwrap_err());
        assert!(e.contains("in use by another keel process"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        acquire(&db).unwrap();
    }
}
