//! Grid names: which names may be asked for, and which files of a grids folder are grids.
//!
//! A grid in a folder is named by its file stem and only ever looked up as
//! `<folder>/<name>.toml`. A name is letters, digits, `-`, `_` and dots that do not lead, so
//! no name can reach a file outside the folder (no `/`, no `..` at the start, no hidden files).

use std::io;
use std::path::{Path, PathBuf};

use crate::error::AppError;

const MAX_NAME: usize = 100;

/// Whether `name` can name a grid at all.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `name` as a grid asked for: 422 for a name that cannot be one, 404 when it is not among
/// `known`.
pub fn check(name: &str, known: &[String]) -> Result<(), AppError> {
    if !valid_name(name) {
        return Err(AppError::Invalid(format!(
            "`{name}` cannot name a grid: a grid is named as GET /api/v1/grids lists it \
             (letters, digits, `-`, `_` and `.`; e.g. `stability`)"
        )));
    }
    if known.iter().any(|k| k == name) {
        Ok(())
    } else {
        Err(AppError::NotFound(format!("grid `{name}` not found")))
    }
}

/// The grid `name` in the folder `dir`, if there is one.
pub fn path(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    (valid_name(name) && path.is_file()).then_some(path)
}

/// The names of the grids in `dir`, sorted; none when the folder does not exist.
pub fn names(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "toml") || !path.is_file() {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            && valid_name(stem)
        {
            out.push(stem.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_names_are_plain_file_stems() {
        for ok in ["stability", "yulan-ladder", "a_b.v2", "X9"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a\\b",
            "é",
            &long,
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_toml_files_with_plain_stems_are_grids() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b.toml",
            "a.toml",
            "notes.md",
            ".hidden.toml",
            "with space.toml",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("folder.toml")).unwrap();
        let known = names(dir.path()).unwrap();
        assert_eq!(known, ["a", "b"]);
        assert!(names(&dir.path().join("missing")).unwrap().is_empty());
        assert!(path(dir.path(), "a").is_some_and(|p| p.ends_with("a.toml")));
        for missing in ["c", "../a", "folder", ".hidden"] {
            assert_eq!(path(dir.path(), missing), None, "{missing}");
        }
        assert!(check("a", &known).is_ok());
        assert!(matches!(check("c", &known), Err(AppError::NotFound(_))));
        assert!(matches!(check("../a", &known), Err(AppError::Invalid(_))));
    }
}
