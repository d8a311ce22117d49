//! What a training step's activations will take, and what the device has: the check that stops
//! an `anneal` to a longer context from being applied to a run that cannot hold it.
//!
//! The estimate counts what candle's autograd keeps alive from the forward into the backward
//! for this model, at the step's peak: per block about 16 vectors of width `d` and 4 of width
//! `d_ffn` per token, and four `[b, h, t, t]` matrices (the attention's scores and
//! probabilities, and their gradients), three more of those in flight at the peak, and the
//! logits with the loss's copies (batched attention; the streaming one keeps one number per row
//! instead of the scores, so a context too long for them may still fit with it). The score
//! matrices grow with t², so a context switch from 128 to 28,672 tokens multiplies them by
//! 50,000: that is what the check is for. Weights and
//! optimizer moments are already resident and not counted. Against the peak resident memory of
//! `keel train` on proxy-tiny (batch 4, 4 steps; `/usr/bin/time -f %M`): 85 MB at seq_len 256,
//! 656 MB at 1,024 and 1,545 MB at 2,048, where this estimates 34, 413 and 1,564 MB of
//! activations. At 28,672 it estimates 291 GB.

use candle_core::{DType, Device};

use crate::config::ModelConfig;
use crate::ops::Attention;

/// Bytes of activations one step of `batch` × `seq_len` holds at its peak (an estimate).
pub fn activation_bytes(
    m: &ModelConfig,
    batch: usize,
    seq_len: usize,
    dtype: DType,
    attention: Attention,
) -> u64 {
    let (b, t) = (batch as u64, seq_len as u64);
    let (d, f, h, v) = (
        m.d_model as u64,
        m.d_ffn as u64,
        m.n_heads as u64,
        m.vocab_size as u64,
    );
    let scores = match attention {
        Attention::Batched => b * h * t * t,
        Attention::Streaming => b * h * t,
    };
    let per_block = b * t * (16 * d + 4 * f) + 4 * scores;
    let elems = m.n_layers as u64 * per_block + 3 * scores + 4 * b * t * v;
    elems * dtype.size_in_bytes() as u64
}

/// Memory the device can still give this process, in bytes; `None` where it cannot be read.
/// On the CPU: the kernel's `MemAvailable` (what can be allocated without swapping); on a CUDA
/// device: the driver's free memory.
pub fn available_bytes(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, _total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some(free as u64)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Memory in use on the device, for a peak: on a CUDA device the driver's total less its free
/// memory; on the CPU this process's peak resident memory (`VmHWM`).
pub fn device_used_bytes(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `n` bytes for a person: `15.7 GB`, `512 MB`.
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else {
        format!("{:.0} MB", n / 1e6)
    }
}

/// How a step at a new length fits: which attention it runs (batched if that fits, else
/// streaming when `streaming_ok`), each needing at most 80 % of what is available once the
/// current step's activations are given back. `Err` says why not, with the estimates.
pub fn fit(
    m: &ModelConfig,
    batch: usize,
    (old_len, old_attention): (usize, Attention),
    new_len: usize,
    dtype: DType,
    available: Option<u64>,
    streaming_ok: bool,
) -> Result<Attention, String> {
    let Some(free) = available else {
        return Ok(old_attention);
    };
    let budget = (free + activation_bytes(m, batch, old_len, dtype, old_attention)) / 10 * 8;
    let need = |a| activation_bytes(m, batch, new_len, dtype, a);
    if need(Attention::Batched) <= budget {
        return Ok(Attention::Batched);
    }
    if streaming_ok && need(Attention::Streaming) <= budget {
        return Ok(Attention::Streaming);
    }
    let streaming = if streaming_ok {
        format!(
            " ({} with the streaming attention)",
            human(need(Attention::Streaming))
        )
    } else {
        String::new()
    };
    Err(format!(
        "a step at seq_len {new_len} (batch {batch}) needs about {} of activations{streaming}; \
         this machine has {} available",
        human(need(Attention::Batched)),
        human(free)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo_in_kib() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(mem_available(text), Some(1_024_000));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_estimate_grows_with_the_square_of_the_context_and_refuses_what_will_not_fit() {
        let m = ModelConfig::default();
        let est = |t, a| activation_bytes(&m, 4, t, DType::F32, a);
        let (short, long) = (est(128, Attention::Batched), est(1280, Attention::Batched));
        assert!(long > 40 * short, "{short} {long}");
        // Streaming grows linearly.
        let (short, long) = (
            est(128, Attention::Streaming),
            est(1280, Attention::Streaming),
        );
        assert!(long <= 10 * short + 1, "{short} {long}");
        let gb = 1_000_000_000;
        let old = (128, Attention::Batched);
        let fit_in = |t, free, ok| fit(&m, 4, old, t, DType::F32, free, ok);
        assert_eq!(fit_in(256, Some(gb), true), Ok(Attention::Batched));
        // 4,096 tokens: the scores would take 21 GB; streaming, 0.9 GB.
        assert_eq!(fit_in(4096, Some(2 * gb), true), Ok(Attention::Streaming));
        let why = fit_in(4096, Some(gb), false).unwrap_err();
        assert!(
            why.contains("4096") && why.contains("GB available"),
            "{why}"
        );
        let why = fit_in(28_672 * 8, Some(gb), true).unwrap_err();
        assert!(why.contains("with the streaming attention"), "{why}");
        assert_eq!(fit_in(28_672, None, true), Ok(Attention::Batched));
    }
}
