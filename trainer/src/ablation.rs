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
//!
//! A `[sweep]` table crosses every variant with every point of its axes (a grid without
//! `[variants]` is one unnamed variant). An axis is one dotted key with a list of values,
//! labelled by the key's last part and the value, or a table of named points, each a table of
//! keys set together:
//!
//! ```toml
//! [sweep]
//! "optim.lr" = [0.003, 0.01]                     # …-lr0.003, …-lr0.01
//! [sweep.width]
//! d32 = { model.d_model = 32, model.d_ffn = 80 }   # …-d32
//! d64 = { model.d_model = 64, model.d_ffn = 160 }  # …-d64
//! ```
//! so `[variants.mup]` with that sweep gives `mup-d32-lr0.003` and three more. Axes apply in
//! name order, each point over the variant's own keys.
//!
//! A `[launch]` table is not part of any variant's config: it says how the grid's trainers are
//! launched (the device they train on; `[launch.slurm]`, their jobs' `sbatch` options), for
//! whoever launches it to read with [`load_launch`].

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::{self, Kind, TrainConfig, builtin, deep_merge};

/// The `[launch]` table of a grid (a built-in name or a file), an empty table when it has
/// none.
pub fn load_launch(path: &Path) -> Result<toml::Table> {
    let (grid, _) = config::read_toml(path, Kind::Grid)?;
    match grid.get("launch") {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t.clone()),
        Some(_) => bail!("`launch` must be a table ([launch] or [launch.slurm])"),
    }
}

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
        if !matches!(key.as_str(), "base" | "variants" | "sweep" | "launch") {
            let mut shared = toml::Table::new();
            shared.insert(key.clone(), value.clone());
            deep_merge(&mut base, toml::Value::Table(shared));
        }
    }
    let empty = toml::Table::from_iter([(String::new(), toml::Value::Table(toml::Table::new()))]);
    let variants = match table.get("variants") {
        Some(v) => v
            .as_table()
            .context("`variants` must be a table of tables")?,
        None if table.contains_key("sweep") => &empty,
        None => bail!("a grid needs [variants.<name>] tables (or a [sweep])"),
    };
    let points = match table.get("sweep") {
        Some(sweep) => sweep_points(sweep)?,
        None => vec![(String::new(), Vec::new())],
    };
    let mut out = Vec::new();
    for (name, over) in variants {
        for (label, sets) in &points {
            let name = match (name.is_empty(), label.is_empty()) {
                (_, true) => name.clone(),
                (true, false) => label.clone(),
                (false, false) => format!("{name}-{label}"),
            };
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
            for set in sets {
                deep_merge(&mut merged, set.clone());
            }
            let cfg = config::from_value(merged, &base_dir)
                .with_context(|| format!("variant `{name}` of {}", path.display()))?;
            out.push((name, cfg));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every point of a `[sweep]`: its label (`d32-lr0.01`) and the tables it merges, one per axis.
fn sweep_points(sweep: &toml::Value) -> Result<Vec<(String, Vec<toml::Value>)>> {
    let axes = sweep
        .as_table()
        .context("`sweep` must be a table of axes")?;
    let mut points = vec![(String::new(), Vec::new())];
    for (axis, values) in axes {
        let choices: Vec<(String, toml::Value)> = match values {
            toml::Value::Array(list) => {
                let short = axis.rsplit('.').next().unwrap_or(axis);
                list.iter()
                    .map(|v| {
                        let mut t = toml::Value::Table(toml::Table::new());
                        config::set_dotted(&mut t, axis, v.clone())?;
                        let shown = match v {
                            toml::Value::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                        Ok((format!("{short}{shown}"), t))
                    })
                    .collect::<Result<_>>()?
            }
            toml::Value::Table(named) => named
                .iter()
                .map(|(n, t)| match t {
                    toml::Value::Table(_) => Ok((n.clone(), t.clone())),
                    _ => bail!("point `{n}` of sweep axis `{axis}` must be a table of keys"),
                })
                .collect::<Result<_>>()?,
            _ => bail!("sweep axis `{axis}` must be a list of values or a table of points"),
        };
        if choices.is_empty() {
            bail!("sweep axis `{axis}` has no points");
        }
        points = points
            .into_iter()
            .flat_map(|(label, sets)| {
                choices.iter().map(move |(l, t)| {
                    let label = if label.is_empty() {
                        l.clone()
                    } else {
                        format!("{label}-{l}")
                    };
                    let mut sets = sets.clone();
                    sets.push(t.clone());
                    (label, sets)
                })
            })
            .collect();
    }
    Ok(points)
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

    #[test]
    fn a_sweep_crosses_every_variant_with_every_point_of_its_axes() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
base = "proxy-tiny"
[variants.sp]
stability.init = "normal_0.02"
[variants.mup]
stability.init = "mup"
[sweep]
"optim.lr" = [0.003, 0.01]
[sweep.width]
d32 = { model.d_model = 32, model.d_ffn = 80 }
d64 = { model.d_model = 64, model.d_ffn = 160 }
"#;
        std::fs::write(dir.path().join("g.toml"), text).unwrap();
        let grid = load_grid(&dir.path().join("g.toml")).unwrap();
        let names: Vec<_> = grid.iter().map(|(n, _)| n.as_str()).collect();
        // Axes in name order: `optim.lr`, then `width`.
        assert_eq!(
            names,
            [
                "mup-lr0.003-d32",
                "mup-lr0.003-d64",
                "mup-lr0.01-d32",
                "mup-lr0.01-d64",
                "sp-lr0.003-d32",
                "sp-lr0.003-d64",
                "sp-lr0.01-d32",
                "sp-lr0.01-d64"
            ]
        );
        let (_, c) = &grid[3];
        assert_eq!(
            (c.model.d_model, c.model.d_ffn, c.optim.lr),
            (64, 160, 0.01)
        );
        assert_eq!(c.stability.init, crate::config::InitScheme::Mup);
        assert_eq!(c.run.name, "proxy-tiny-mup-lr0.01-d64");

        // Without variants, a sweep is a grid by itself; a bad axis says which.
        std::fs::write(
            dir.path().join("s.toml"),
            "base = 'proxy-tiny'\n[sweep]\n'run.seed' = [1, 2]\n",
        )
        .unwrap();
        let names: Vec<_> = load_grid(&dir.path().join("s.toml"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["seed1", "seed2"]);
        std::fs::write(
            dir.path().join("b.toml"),
            "base = 'proxy-tiny'\n[sweep]\nlr = 3\n",
        )
        .unwrap();
        let e = format!("{:#}", load_grid(&dir.path().join("b.toml")).unwrap_err());
        assert!(e.contains("sweep axis `lr`"), "{e}");
    }
}
