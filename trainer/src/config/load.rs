//! Reading configs: built-in or from a file, TOML parsing, dotted-key overrides, deep merges
//! (for ablation grids), relative-path resolution and validation. No defaults live here: they
//! are the `Default` impls of [`super`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::TrainConfig;
use super::builtin;

/// Read a config file, apply dotted-key overrides (`("optim.lr", 0.003)`), and validate.
pub fn load_config(path: &Path) -> Result<TrainConfig> {
    load_with_overrides(path, &[])
}

pub fn load_with_overrides(
    path: &Path,
    overrides: &[(String, toml::Value)],
) -> Result<TrainConfig> {
    let (mut value, dir) = read_toml(path, Kind::Config)?;
    for (key, v) in overrides {
        set_dotted(&mut value, key, v.clone())?;
    }
    from_value(value, &dir).with_context(|| format!("in config {}", path.display()))
}

/// What a spec names: built-in configs and grids have names of their own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    Config,
    Grid,
}

/// The TOML that `spec` names (a built-in name or a file, see [`builtin`]) and the folder its
/// relative paths resolve against: the file's own, or the working directory for a built-in.
pub(crate) fn read_toml(spec: &Path, kind: Kind) -> Result<(toml::Value, PathBuf)> {
    let what = match kind {
        Kind::Config => "config",
        Kind::Grid => "grid",
    };
    let (text, origin, dir) = match builtin::name_of(spec) {
        Some(name) => {
            let found = match kind {
                Kind::Config => builtin::config(name),
                Kind::Grid => builtin::grid(name),
            };
            let Some(b) = found else {
                let known = match kind {
                    Kind::Config => builtin::listed(builtin::configs()),
                    Kind::Grid => builtin::listed(builtin::grids()),
                };
                anyhow::bail!(
                    "there is no built-in {what} `{name}`: the built-in {what}s are {known} \
                     (`keel configs` lists them); a file is named by its path, e.g. `./{name}.toml`"
                );
            };
            (
                b.text.to_owned(),
                format!("built-in {what} {name}"),
                PathBuf::from("."),
            )
        }
        None => {
            let text = std::fs::read_to_string(spec)
                .with_context(|| format!("reading {what} {}", spec.display()))?;
            let dir = spec.parent().unwrap_or(Path::new(".")).to_path_buf();
            (text, format!("{what} {}", spec.display()), dir)
        }
    };
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {origin}"))?;
    Ok((toml::Value::Table(table), dir))
}

/// Deserialise a merged TOML value, resolve relative paths against `base_dir`, validate.
pub(crate) fn from_value(value: toml::Value, base_dir: &Path) -> Result<TrainConfig> {
    let mut cfg: TrainConfig = value.try_into()?;
    for source in &mut cfg.data.sources {
        if let Some(p) = &source.path {
            source.path = Some(resolve(base_dir, p));
        }
    }
    if let Some(t) = &cfg.data.tokenizer {
        cfg.data.tokenizer = Some(resolve(base_dir, t));
    }
    cfg.validate()?;
    Ok(cfg)
}

fn resolve(base_dir: &Path, p: &str) -> String {
    if Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base_dir.join(p).to_string_lossy().into_owned()
    }
}

/// Set `a.b.c = v` inside a TOML table, creating tables on the way.
pub fn set_dotted(root: &mut toml::Value, key: &str, v: toml::Value) -> Result<()> {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let table = node
            .as_table_mut()
            .with_context(|| format!("override {key}: {part} is not a table"))?;
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = node
        .as_table_mut()
        .with_context(|| format!("override {key}: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// Merge `over` into `base`: tables recursively, anything else replaced.
pub fn deep_merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InitScheme;

    #[test]
    fn an_empty_file_gives_yulan_minis_final_choices() {
        let cfg = from_value(toml::Value::Table(toml::Table::new()), Path::new(".")).unwrap();
        assert_eq!(cfg.stability.init, InitScheme::Mup);
        assert_eq!(cfg.stability.emb_multiplier, 10.0);
        assert!(cfg.stability.depth_mup && cfg.stability.wesar && !cfg.stability.qk_norm);
        assert_eq!((cfg.optim.beta2, cfg.optim.eps), (0.95, 1e-15));
        assert_eq!((cfg.optim.weight_decay, cfg.optim.grad_clip), (0.1, 1.0));
    }

    #[test]
    fn dotted_overrides_and_deep_merges_reach_nested_keys() {
        let mut v: toml::Value = toml::from_str("[optim]\nlr = 0.01\nbeta1 = 0.8").unwrap();
        set_dotted(&mut v, "optim.lr", toml::Value::Float(0.5)).unwrap();
        deep_merge(&mut v, toml::from_str("stability.init = 'scaled'").unwrap());
        let cfg = from_value(v, Path::new(".")).unwrap();
        assert_eq!((cfg.optim.lr, cfg.optim.beta1), (0.5, 0.8));
        assert_eq!(cfg.stability.init, InitScheme::Scaled);
    }

    #[test]
    fn a_config_is_a_built_in_name_or_a_file() {
        let built_in = load_config(Path::new("proxy-tiny")).unwrap();
        assert_eq!(built_in.run.name, "proxy-tiny");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/proxy-tiny.toml");
        assert_eq!(load_config(&file).unwrap(), built_in);
        let e = format!("{:#}", load_config(Path::new("proxy-huge")).unwrap_err());
        assert!(e.contains("no built-in config `proxy-huge`"), "{e}");
        assert!(
            e.contains("`proxy-tiny`, `proxy-small`, `yulan-proxy-0.05b` or `spike-drill`"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_config(Path::new("./missing.toml")).unwrap_err()
        );
        assert!(e.contains("reading config ./missing.toml"), "{e}");
        // A grid's name is not a config's.
        assert!(read_toml(Path::new("stability"), Kind::Config).is_err());
        assert!(read_toml(Path::new("stability"), Kind::Grid).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_shapes_are_refused() {
        let bad = [
            "[optim]\nlearning_rate = 1.0",
            "[model]\nd_model = 30\nn_heads = 4",
        ];
        for text in bad {
            let v: toml::Value = toml::from_str(text).unwrap();
            assert!(from_value(v, Path::new(".")).is_err(), "{text}");
        }
    }
}
