//! Throughput and the cost of the statistics: `cargo run --release -p keel-trainer --example
//! bench -- configs/proxy-small.toml [rounds]`. Two trainers of the same config, one collecting
//! every per-layer statistic every step and one collecting none, run in interleaved rounds of
//! 5 steps so that machine noise hits both alike; the medians of their step times are compared.

use std::time::Instant;

use candle_core::Device;
use keel_trainer::load_config;
use keel_trainer::trainer::Trainer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .map_or("configs/proxy-small.toml", String::as_str);
    let rounds: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let cfg = load_config(path.as_ref())?;
    let dir = std::env::temp_dir().join("keel-bench");
    let mut none = cfg.clone();
    none.stats.every = u64::MAX;
    // KEEL_BENCH_AA=1 runs the same no-statistics config on both sides: the noise floor.
    let aa = std::env::var_os("KEEL_BENCH_AA").is_some();
    let mut with = Trainer::new(
        if aa { none.clone() } else { cfg.clone() },
        &Device::Cpu,
        dir.clone(),
    )?;
    let mut without = Trainer::new(none, &Device::Cpu, dir)?;
    // KEEL_BENCH_ATTENTION=streaming times the streaming attention kernel instead.
    if std::env::var("KEEL_BENCH_ATTENTION").as_deref() == Ok("streaming") {
        for t in [&mut with, &mut without] {
            t.model
                .set_attention(keel_trainer::ops::Attention::Streaming);
        }
    }
    // Warm up both (allocator, thread pools); step 0 of `without` collects once (0 % k == 0).
    for _ in 0..3 {
        with.step()?;
        without.step()?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut cpu_a, mut cpu_b) = (0.0, 0.0);
    for _ in 0..rounds {
        let c0 = cpu_seconds();
        a.extend(time(&mut with, 5)?);
        let c1 = cpu_seconds();
        b.extend(time(&mut without, 5)?);
        cpu_a += c1 - c0;
        cpu_b += cpu_seconds() - c1;
    }
    let tokens = (cfg.run.batch_size * cfg.model.seq_len) as f64;
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!(
        "params {}  batch {} x seq {}",
        with.params.count(),
        cfg.run.batch_size,
        cfg.model.seq_len
    );
    println!(
        "all statistics every step: {:.1} ms/step  {:.0} tokens/s",
        ma * 1e3,
        tokens / ma
    );
    println!(
        "no per-layer statistics:   {:.1} ms/step  {:.0} tokens/s",
        mb * 1e3,
        tokens / mb
    );
    println!(
        "statistics cost: {:+.2}% of step time (wall, medians)",
        (ma / mb - 1.0) * 100.0
    );
    // CPU time is steadier than wall time on a shared machine: other processes don't add to it.
    println!(
        "statistics cost: {:+.2}% of CPU time (process user+system)",
        (cpu_a / cpu_b - 1.0) * 100.0
    );
    Ok(())
}

fn time(t: &mut Trainer, n: usize) -> anyhow::Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            t.step()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Clock ticks are 100 per second on Linux.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}
