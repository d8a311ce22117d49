#!/usr/bin/env bash
# Builds the `keel` binary for users: a release build of this checkout for the machine's
# target (x86_64-unknown-linux-gnu here), stripped, named with its version, with a SHA-256
# beside it, in dist/. Everything it needs at run time is inside it (pages, configs, grids,
# the charts' font); it links only glibc, so it runs on this machine's glibc or newer.
#
#   scripts/release.sh            # → dist/keel-<version>-<target>, dist/…sha256
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bin keel
version=$(./target/release/keel --version | awk '{print $2}')
mkdir -p dist
out="dist/keel-${version}-${target}"
cp target/release/keel "$out"
strip "$out" 2>/dev/null || echo "strip not found: the binary keeps its line tables" >&2
(cd dist && sha256sum "$(basename "$out")" > "$(basename "$out").sha256")
"$out" --version
ls -l "$out"
