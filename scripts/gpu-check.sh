#!/usr/bin/env bash
# The trainer on one NVIDIA GPU, measured: run on a machine with the GPU and a keel built by
# scripts/build-cuda.sh (no Rust toolchain needed there).
#
#   scripts/gpu-check.sh [path/to/keel]       # default target/cuda/release/keel, else the
#                                             # compressed target/cuda/keel.xz, unpacked
#
# It writes gpu-check.md (into $OUT when that is set) with one row per run of
# `keel bench trainer`:
#   - proxy-small, 200 steps on cuda:0 in f32 and in bf16, each also trained for 50 steps in f32
#     on the GPU and on the CPU from the same start: the loss gap is the largest relative
#     difference over those steps (and bf16's against the GPU's f32);
#   - yulan-proxy-0.05b (YuLan-Mini's 0.05B proxy shape), 100 steps in f32, tf32 and bf16;
# each with tokens/s, MFU against the peak below, what the per-layer statistics add to a step,
# device→host reads per step with the statistics on and off, and peak GPU memory.
#
# Peaks for MFU (dense TFLOP/s; H100/H200 SXM by default): KEEL_PEAK_F32 (67), KEEL_PEAK_TF32
# (495), KEEL_PEAK_BF16 (989). KEEL_GPU picks the device (default cuda:0). About 5 minutes on
# an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
keel=${1:-target/cuda/release/keel}
if [ ! -x "$keel" ] && [ -f target/cuda/keel.xz ]; then
  mkdir -p "${TMPDIR:-/tmp}/keel-gpu"
  unpacked=${TMPDIR:-/tmp}/keel-gpu/keel
  if command -v xz >/dev/null; then xz -dc target/cuda/keel.xz >"$unpacked"
  else python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' target/cuda/keel.xz >"$unpacked"
  fi
  chmod +x "$unpacked"
  keel=$unpacked
fi
gpu=${KEEL_GPU:-cuda:0}
out=${OUT:-.}/gpu-check.md
[ -x "$keel" ] || { echo "no keel binary at $keel: build one with scripts/build-cuda.sh" >&2; exit 2; }
if missing=$(ldd "$keel" | grep 'not found'); then
  echo "the binary needs CUDA 13 libraries this machine lacks:" >&2
  echo "$missing" >&2
  echo "put them on LD_LIBRARY_PATH (the wheels of scripts/build-cuda.sh have them)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

f32=${KEEL_PEAK_F32:-67} tf32=${KEEL_PEAK_TF32:-495} bf16=${KEEL_PEAK_BF16:-989}
bench() { "$keel" bench trainer --device "$gpu" "$@"; }
{
  echo "GPU check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%Y-%m-%d), keel $("$keel" --version 2>/dev/null | awk '{print $2}')"
  echo
  bench --config proxy-small --steps 200 --dtype f32 --agree-steps 50 --peak-tflops "$f32"
  bench --config proxy-small --steps 200 --dtype bf16 --agree-steps 50 --peak-tflops "$bf16"
  bench --config yulan-proxy-0.05b --steps 100 --dtype f32 --peak-tflops "$f32"
  bench --config yulan-proxy-0.05b --steps 100 --dtype tf32 --peak-tflops "$tf32"
  bench --config yulan-proxy-0.05b --steps 100 --dtype bf16 --peak-tflops "$bf16"
} | awk '/^\| (config|---)/ { if (seen[$0]++) next } { print }' | grep -v '^| load average' | tee "$out"
echo "written: $out"
