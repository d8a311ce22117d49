//! Print the last/first-layer `hidden_var` ratio of each variant of an ablation grid, at
//! given sizes: `--example stability -- configs/ablations/stability.toml layers d steps`.

use std::path::PathBuf;

use candle_core::Device;
use keel_trainer::load_grid;
use keel_trainer::trainer::Trainer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().unwrap());
    let (layers, d, steps, seq, batch) =
        (arg(1, 6), arg(2, 32), arg(3, 100), arg(4, 32), arg(5, 4));
    for (name, mut cfg) in load_grid(&PathBuf::from(&args[0]))? {
        cfg.model.n_layers = layers;
        cfg.model.d_model = d;
        cfg.model.n_heads = 2;
        cfg.model.d_ffn = d * 5 / 2;
        cfg.model.seq_len = seq;
        cfg.run.batch_size = batch;
        cfg.schedule.warmup_steps = 10;
        cfg.stability.mup_base_width = d;
        for kv in args.iter().skip(6) {
            let (k, v) = kv.split_once('=').unwrap();
            let (variant, k) = k.split_once(':').unwrap_or(("", k));
            if variant.is_empty() || variant == name {
                let mut root = toml::Value::try_from(&cfg)?;
                keel_trainer::config::set_dotted(
                    &mut root,
                    k,
                    toml::from_str::<toml::Table>(&format!("x = {v}"))?["x"].clone(),
                )?;
                cfg = root.try_into()?;
            }
        }
        let mut t = Trainer::new(cfg, &Device::Cpu, std::env::temp_dir().join("keel-stab"))?;
        let mut line = format!("{name:>10}:");
        for s in 0..steps {
            let rec = t.step()?;
            let hv = &rec.layers["hidden_var"];
            if s % (steps / 10).max(1) == 0 || s + 1 == steps {
                let ratio = hv[hv.len() - 1].get() / hv[0].get();
                let (first, last) = (hv[0].get(), hv[hv.len() - 1].get());
                line += &format!(
                    " {s}:{ratio:.2}({first:.2},{last:.2})/{:.2}",
                    rec.scalars["loss"].get()
                );
            }
        }
        println!("{line}");
    }
    Ok(())
}
