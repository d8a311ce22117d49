//! `keel configs`: the configs and ablation grids built into this binary, listed, or one of
//! them printed so that a user can start their own from it
//! (`keel configs show proxy-small > mine.toml`).

use keel_trainer::config::builtin::{self, Builtin};

#[derive(clap::Args)]
pub struct ConfigsArgs {
    #[command(subcommand)]
    show: Option<Show>,
}

#[derive(clap::Subcommand)]
enum Show {
    /// Print one built-in config or grid as TOML.
    Show {
        /// Its name, as `keel configs` lists it.
        name: String,
    },
}

pub fn run(args: ConfigsArgs) -> anyhow::Result<()> {
    match args.show {
        None => print!("{}", listing()),
        Some(Show::Show { name }) => {
            let found = builtin::config(&name).or_else(|| builtin::grid(&name));
            let Some(b) = found else {
                anyhow::bail!(
                    "no built-in config or grid is named `{name}`; `keel configs` lists them"
                );
            };
            print!("{}", b.text);
        }
    }
    Ok(())
}

fn listing() -> String {
    let table = |items: Vec<Builtin>| -> String {
        let width = items.iter().map(|b| b.name.len()).max().unwrap_or(0);
        items
            .iter()
            .map(|b| format!("  {:width$}  {}\n", b.name, b.about))
            .collect()
    };
    format!(
        "configs (keel train --config NAME):\n{}\nablation grids (keel ablate NAME, or the runs page):\n{}\n\
         `keel configs show NAME` prints one; a file of your own is named by its path.\n",
        table(builtin::configs().collect()),
        table(builtin::grids().collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_names_every_built_in_config_and_grid() {
        let text = listing();
        for b in builtin::configs().chain(builtin::grids()) {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(b.name) && l.contains(b.about)),
                "{} is listed with its summary:\n{text}",
                b.name
            );
        }
    }
}
