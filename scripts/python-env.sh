#!/usr/bin/env bash
# The Python environment of the PyTorch tests: a virtualenv with torch, transformers,
# lightning and tensorboard from PyPI, kept outside the repository (≈ 5.7 GB; about a minute
# on a fresh machine with a fast link) and reused while the pins below stay the same.
# Prints the interpreter's path: KEEL_PYTHON=$(scripts/python-env.sh) cargo test ...
#   KEEL_PYTHON_ENV   where the virtualenv lives (default ~/.cache/keel-torch)
set -euo pipefail
env_dir=${KEEL_PYTHON_ENV:-$HOME/.cache/keel-torch}
pins="torch==2.15.0 transformers==5.24.0 accelerate==1.15.0 lightning==2.6.6 tensorboard==2.21.0"
python=$env_dir/bin/python
if [ ! -x "$python" ] || [ "$(cat "$env_dir/.keel-pins" 2>/dev/null)" != "$pins" ]; then
  echo "making the PyTorch environment in $env_dir: $pins" >&2
  python3 -m venv "$env_dir" >&2
  "$python" -m pip install -q --upgrade pip >&2
  # shellcheck disable=SC2086
  "$python" -m pip install -q $pins >&2
  echo "$pins" >"$env_dir/.keel-pins"
fi
echo "$python"
