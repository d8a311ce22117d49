#!/usr/bin/env bash
# Builds keel with candle's CUDA backend (`--features cuda`) on a machine without a GPU or a
# CUDA toolkit: nvcc, the CUDA headers and the libraries come from NVIDIA's CUDA 13.2 wheels on
# PyPI, installed into a virtualenv cached outside the repository.
#
#   scripts/build-cuda.sh            # target/cuda/release/keel (about 12 min on 2 cores from
#                                    # a clean target dir), and target/cuda/keel.xz:
#                                    # stripped and compressed (12 MB, against 197 MB), to
#                                    # carry to a GPU machine
#   scripts/build-cuda.sh check      # clippy (cargo check and lints) with --features cuda:
#                                    # what CI runs, so the CUDA code cannot rot
#
# Settings (environment):
#   KEEL_CUDA_CACHE   where the virtualenv goes (default ~/.cache/keel-cuda, about 1.1 GB)
#   CUDA_COMPUTE_CAP  the GPU generation the kernels are compiled for (default 90: H100/H200;
#                     80 for A100, 89 for L4/L40)
#
# The wheels are CUDA 13.2 because cudarc, which candle uses, knows CUDA versions up to 13.2.
# Two things no wheel ships are made here: unversioned `.so` names for the linker, and a
# `libcuda.so` stub that defines the driver API's functions (the driver comes with the GPU's
# machine; at run time the real `libcuda.so.1` answers). The binary needs the wheel libraries
# at run time: `scripts/gpu-check.sh` sets LD_LIBRARY_PATH to them, and a GPU machine's own
# CUDA 13 installation does as well.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
cache=${KEEL_CUDA_CACHE:-$HOME/.cache/keel-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$cache/venv/bin/pip" ]; then
  mkdir -p "$cache"
  python3 -m venv "$cache/venv" || {
    echo "python3 -m venv failed: on Debian, apt-get install python3-venv" >&2
    exit 1
  }
fi
"$cache/venv/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.2.78 nvidia-cuda-crt==13.2.78 nvidia-nvvm==13.2.78 \
  nvidia-cuda-runtime==13.2.75 nvidia-cuda-nvrtc==13.2.78 nvidia-cuda-cccl==13.2.75 \
  nvidia-cublas==13.3.0.5 nvidia-curand==10.4.2.51
cuda=$("$cache/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')

# Unversioned names for the linker (libcublas.so → libcublas.so.13).
for lib in "$cuda"/lib/lib*.so.*; do
  base=${lib%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done

# The driver API stub: every cu* function cudarc declares, doing nothing, under the driver's
# soname, so the binary records a dependency on libcuda.so.1 and finds the real one at run time.
stubs=$cache/stubs
if [ ! -e "$stubs/libcuda.so" ]; then
  cargo fetch --quiet
  sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | sort | tail -1)
  [ -n "$sys" ] || { echo "cudarc's driver bindings not found in the cargo registry" >&2; exit 1; }
  mkdir -p "$stubs"
  grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$sys" | sed 's/^fn //; s/($//' | sort -u |
    awk '{ print "void " $1 "(void) {}" }' >"$stubs/cuda-stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/cuda-stub.c"
fi

export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda
export PATH=$cuda/bin:$PATH
export LIBRARY_PATH=$cuda/lib:$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
nvcc --version | tail -2

start=$(date +%s)
case $mode in
  check) cargo clippy --locked --features cuda --all-targets -- -D warnings ;;
  build) cargo build --locked --release --features cuda ;;
  *) echo "usage: $0 [build|check]" >&2; exit 2 ;;
esac
echo "cuda $mode: $(( $(date +%s) - start )) s (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
if [ "$mode" = build ]; then
  bin=$CARGO_TARGET_DIR/release/keel
  strip -o "$CARGO_TARGET_DIR/keel.stripped" "$bin"
  xz -T0 -6 -c "$CARGO_TARGET_DIR/keel.stripped" >"$CARGO_TARGET_DIR/keel.xz"
  rm "$CARGO_TARGET_DIR/keel.stripped"
  echo "binary: $bin; to carry: $CARGO_TARGET_DIR/keel.xz ($(du -h "$CARGO_TARGET_DIR/keel.xz" | cut -f1))"
fi
exit 0
