//! Instability you can see: the two recipes of `configs/ablations/stability.toml`, shrunk to a
//! tiny proxy, trained side by side at a fixed seed.

use std::path::Path;

use keel_trainer::load_grid;

use crate::support;

/// Last-layer `hidden_var` and last/first-layer ratio per step, for one variant of the grid.
fn run(variant: &str, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/ablations/stability.toml");
    let (_, mut cfg) = load_grid(&grid)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == variant)
        .unwrap();
    cfg.model.n_layers = 6;
    cfg.model.d_model = 32;
    cfg.model.n_heads = 2;
    cfg.model.d_ffn = 80;
    cfg.model.seq_len = 32;
    cfg.run.batch_size = 4;
    cfg.schedule.warmup_steps = 10;
    cfg.stability.mup_base_width = 32;
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(cfg, dir.path());
    let (mut last, mut ratio) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let hv: Vec<f64> = t.step().unwrap().layers["hidden_var"]
            .iter()
            .map(|m| m.get())
            .collect();
        last.push(hv[hv.len() - 1]);
        ratio.push(hv[hv.len() - 1] / hv[0]);
    }
    (last, ratio)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn the_unstable_recipe_keeps_inflating_hidden_variance_while_the_stable_one_stays_flat() {
    let steps = 150;
    let (unstable, unstable_ratio) = run("unstable", steps);
    let (stable, stable_ratio) = run("stable", steps);
    // Windows: just after warmup (steps 20..40) and the last 30 steps.
    let (early, late) = (20..40, steps - 30..steps);
    let growth = |v: &[f64]| mean(&v[late.clone()]) / mean(&v[early.clone()]);
    eprintln!(
        "last-layer hidden_var growth: unstable {:.1}×, stable {:.2}×",
        growth(&unstable),
        growth(&stable)
    );
    eprintln!(
        "late depth ratio: unstable {:.2}, stable {:.2}",
        mean(&unstable_ratio[late.clone()]),
        mean(&stable_ratio[late.clone()])
    );
    // Measured at seed 1 (6 layers, d 32): the unstable recipe's last-layer variance grows
    // 2.6–3.8× after warmup and ends far above the stable one, whose variance drifts down
    // (0.80×). The unstable run is chaotic, so its exact growth is rounding luck: 2.7× with
    // the fused CPU kernels in f32, 3.80× with the composed ops in f32, 2.89× and 2.92× with
    // either in f64 (where their losses agree to 7 digits through step 50). The stable
    // recipe's 0.80× is the same in all four.
    assert!(
        growth(&unstable) > 2.0,
        "unstable grew only {:.2}×",
        growth(&unstable)
    );
    assert!(growth(&stable) < 1.5, "stable grew {:.2}×", growth(&stable));
    assert!(mean(&unstable[late.clone()]) > 100.0 * mean(&stable[late.clone()]));
    assert!(stable_ratio[late].iter().all(|r| (0.5..4.0).contains(r)));
}

#[test]
fn the_stability_grid_gives_one_config_per_variant_with_its_switches() {
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/ablations/stability.toml");
    let variants = load_grid(&grid).unwrap();
    let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stable", "unstable"]);
    let (stable, unstable) = (&variants[0].1, &variants[1].1);
    assert!(stable.stability.depth_mup && stable.stability.wesar);
    assert!(!unstable.stability.depth_mup && !unstable.stability.wesar);
    assert!(unstable.optim.lr > stable.optim.lr);
    // Everything else comes from the base, proxy-small.
    assert_eq!((unstable.model.n_layers, unstable.model.d_model), (4, 128));
    assert_eq!(unstable.run.name, "proxy-small-unstable");
}
