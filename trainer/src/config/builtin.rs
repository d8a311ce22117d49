//! The configs and ablation grids that ship inside the binary, and how a name on the command
//! line is told from a path.
//!
//! They are the files of the repository's `configs/` folder, compiled in, so `keel train
//! --config proxy-small` works wherever the binary is; a test keeps the two byte for byte
//! equal. A *spec* naming a config or a grid is a built-in name when it is one plain word (no
//! `/`, no `.toml`), and a file path otherwise: `proxy-small` is built in,
//! `./proxy-small.toml` and `configs/proxy-small.toml` are files.

use std::path::Path;

/// A config or a grid shipped in the binary.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    pub name: &'static str,
    /// Its first comment line, as a one-line summary.
    pub about: &'static str,
    pub text: &'static str,
}

macro_rules! builtin {
    ($name:literal, $file:literal) => {
        Builtin {
            name: $name,
            about: "",
            text: include_str!(concat!("../../../configs/", $file)),
        }
    };
}

const CONFIGS: [Builtin; 4] = [
    builtin!("proxy-tiny", "proxy-tiny.toml"),
    builtin!("proxy-small", "proxy-small.toml"),
    builtin!("yulan-proxy-0.05b", "yulan-proxy-0.05b.toml"),
    builtin!("spike-drill", "spike-drill.toml"),
];

const GRIDS: [Builtin; 3] = [
    builtin!("stability", "ablations/stability.toml"),
    builtin!("yulan-ladder", "ablations/yulan-ladder.toml"),
    builtin!("mup-transfer", "ablations/mup-transfer.toml"),
];

/// The built-in training configs, smallest first, then the spike drill.
pub fn configs() -> impl Iterator<Item = Builtin> {
    CONFIGS.into_iter().map(with_about)
}

/// The built-in ablation grids, by name.
pub fn grids() -> impl Iterator<Item = Builtin> {
    GRIDS.into_iter().map(with_about)
}

pub fn config(name: &str) -> Option<Builtin> {
    configs().find(|b| b.name == name)
}

pub fn grid(name: &str) -> Option<Builtin> {
    grids().find(|b| b.name == name)
}

/// The built-in name `spec` stands for, or `None` when it is a path.
pub fn name_of(spec: &Path) -> Option<&str> {
    let s = spec.to_str()?;
    let plain = !s.is_empty()
        && !s.ends_with(".toml")
        && !s.contains(['/', '\\'])
        && !matches!(s, "." | "..");
    plain.then_some(s)
}

fn with_about(mut b: Builtin) -> Builtin {
    b.about = b
        .text
        .lines()
        .find_map(|l| l.strip_prefix('#'))
        .map(str::trim)
        .unwrap_or("");
    b
}

/// "`a`, `b` or `c`": the names, for an error message.
pub(crate) fn listed(items: impl Iterator<Item = Builtin>) -> String {
    let names: Vec<String> = items.map(|b| format!("`{}`", b.name)).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_word_is_a_name_and_anything_like_a_path_is_a_file() {
        for name in ["proxy-small", "stability", "yulan-proxy-0.05b", "x"] {
            assert_eq!(name_of(Path::new(name)), Some(name));
        }
        for path in [
            "proxy-small.toml",
            "./proxy-small",
            "configs/proxy-small.toml",
            "/etc/x",
            "..",
            "",
        ] {
            assert_eq!(name_of(Path::new(path)), None, "{path}");
        }
    }

    #[test]
    fn the_built_in_files_are_the_repositorys_configs_byte_for_byte() {
        // The embedded copies cannot drift from the files people read and edit.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let on_disk = |dir: &Path| -> Vec<(String, String)> {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .map(|p| {
                    let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
                    (stem, std::fs::read_to_string(&p).unwrap())
                })
                .collect();
            files.sort();
            files
        };
        let embedded = |items: Vec<Builtin>| -> Vec<(String, String)> {
            let mut v: Vec<_> = items
                .into_iter()
                .map(|b| (b.name.to_owned(), b.text.to_owned()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(embedded(configs().collect()), on_disk(&root));
        assert_eq!(
            embedded(grids().collect()),
            on_disk(&root.join("ablations"))
        );
        for b in configs().chain(grids()) {
            assert!(!b.about.is_empty(), "{} opens with a comment", b.name);
        }
    }

    #[test]
    fn names_are_listed_for_messages() {
        assert_eq!(
            listed(grids()),
            "`stability`, `yulan-ladder` or `mup-transfer`".to_string()
        );
    }
}
