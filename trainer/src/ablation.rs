//! Ablation grids: one TOML file, a base config plus named variants, becomes one training
//! config per variant.
//!
//! ```toml
//! base = "proxy-small"              # a built-in config, a path relative to this file
//!                                    # ("../my-proxy.toml"), or an inline [base] table
//! [variants.unstable]
//! stability.init = "normal_0.02"     # any keys of a training config, merged over the base
//! optim.lr = 0.03
//! ```
//! Variants come back sorted by name (TOML tables are maps), each named
//! `<base run name>-<variant>` unless the variant sets `run.name`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::{self, Kind, TrainConfig, builtin, deep_merge};

/// Load a grid, a built-in name or a file: `(variant name, config)` for every
/// `[variants.<name>]` table.
pub fn load_grid(path: &Path) -> Result<Vec<(String, TrainConfig)>> {
    let (grid, dir) = config::read_toml(path, Kind::Grid)?;
    let table = grid.as_table().context("a grid is a TOML table")?;
    let (base, base_dir) = match table.get("base") {
        Some(toml::Value::String(p)) => {
            let spec = match builtin::name_of(Path::new(p)) {
                Some(_) => p.into(),
                None => dir.join(p),
            };
            config::read_toml(&spec, Kind::Config)
                .with_context(|| format!("the base config of grid {}", path.display()))?
        }
        Some(v @ toml::Value::Table(_)) => (v.clone(), dir),
        Some(_) => bail!("`base` must be a config's name or path, or a table"),
        None => (toml::Value::Table(toml::Table::new()), dir),
    };
    // Any other top-level table applies to every variant, on top of the base.
    let mut base = base;
    for (key, value) in table {
        if key != "base" && key != "variants" {
            let mut shared = toml::Table::new();
            shared.insert(key.clone(), value.clone());
            deep_merge(&mut base, toml::Value::Table(shared));
        }
    }
    let variants = table
        .get("variants")
        .and_then(|v| v.as_table())
        .context("a grid needs [variants.<name>] tables")?;
    let mut out = Vec::new();
    for (name, over) in variants {
        let mut merged = base.clone();
        let base_name = merged
            .get("run")
            .and_then(|r| r.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("proxy")
            .to_string();
        config::set_dotted(
            &mut merged,
            "run.name",
            format!("{base_name}-{name}").into(),
        )?;
        deep_merge(&mut merged, over.clone());
        let cfg = config::from_value(merged, &base_dir)
            .with_context(|| format!("variant `{name}` of {}", path.display()))?;
        out.push((name.clone(), cfg));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_names_its_base_by_built_in_name_or_by_a_path_beside_it() {
        let built_in = load_grid(Path::new("stability")).unwrap();
        let names: Vec<_> = built_in.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stable", "unstable"]);

        let dir = tempfile::tempdir().unwrap();
        let mut base = crate::config::builtin::config("proxy-tiny")
            .unwrap()
            .text
            .to_owned();
        base.push_str("\n[optim]\nlr = 0.004\n");
        std::fs::create_dir(dir.path().join("bases")).unwrap();
        std::fs::write(dir.path().join("bases/mine.toml"), base).unwrap();
        let grids = dir.path().join("grids");
        std::fs::create_dir(&grids).unwrap();
        for (file, base) in [
            ("by-path.toml", "../bases/mine.toml"),
            ("by-name.toml", "proxy-tiny"),
        ] {
            let text = format!("base = {base:?}\n[variants.a]\nrun.steps = 3\n");
            std::fs::write(grids.join(file), text).unwrap();
        }
        let by_path = load_grid(&grids.join("by-path.toml")).unwrap();
        assert_eq!(by_path[0].1.optim.lr, 0.004);
        let by_name = load_grid(&grids.join("by-name.toml")).unwrap();
        assert_eq!(by_name[0].1.model, by_path[0].1.model);
        assert_ne!(by_name[0].1.optim.lr, 0.004);

        let e = format!("{:#}", load_grid(Path::new("no-such-grid")).unwrap_err());
        assert!(e.contains("no built-in grid `no-such-grid`"), "{e}");
    }
}
