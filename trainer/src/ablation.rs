//! Ablation grids: one TOML file, a base config plus named variants, becomes one training
//! config per variant.
//!
//! ```toml
//! base = "../proxy-small.toml"      # a path relative to this file, or an inline [base] table
//! [variants.unstable]
//! stability.init = "normal_0.02"     # any keys of a training config, merged over the base
//! optim.lr = 0.03
//! ```
//! Variants come back sorted by name (TOML tables are maps), each named
//! `<base run name>-<variant>` unless the variant sets `run.name`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::{self, TrainConfig, deep_merge};

/// Load a grid: `(variant name, config)` for every `[variants.<name>]` table.
pub fn load_grid(path: &Path) -> Result<Vec<(String, TrainConfig)>> {
    let grid = config::read_toml(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let table = grid.as_table().context("a grid is a TOML table")?;
    let (base, base_dir) = match table.get("base") {
        Some(toml::Value::String(p)) => {
            let p = dir.join(p);
            let base_dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
            (config::read_toml(&p)?, base_dir)
        }
        Some(v @ toml::Value::Table(_)) => (v.clone(), dir.to_path_buf()),
        Some(_) => bail!("`base` must be a path or a table"),
        None => (toml::Value::Table(toml::Table::new()), dir.to_path_buf()),
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
