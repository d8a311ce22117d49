#!/usr/bin/env bash
# Records the real runs of the alert corpus (server/src/alerts/runs/*.csv): the demo's model
# and the stability grid's stable variant for their 2,000 steps, the unstable one for 600
# (its depth alert comes at step 99; what follows is divergence), each trained by a real
# `keel train` against a scratch server, then read back through the API.
#
#   scripts/record-alert-runs.sh            # all three, into server/src/alerts/runs/
#   scripts/record-alert-runs.sh demo       # one of demo, unstable, stable
#
# Run it on an otherwise idle machine (about 15 minutes on 2 cores); the CSVs hold no timings,
# so a busy machine changes nothing but how long it takes.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
out=server/src/alerts/runs
port=${KEEL_RECORD_PORT:-7893}
server=http://127.0.0.1:$port
scratch=$(mktemp -d)
cargo build --release --quiet
keel=target/release/keel
$keel serve --addr 127.0.0.1:$port --db "$scratch/keel.db" --token record >"$scratch/serve.log" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null; rm -rf "$scratch"' EXIT
until curl -sf $server/healthz >/dev/null; do sleep 0.2; done
export KEEL_TOKEN=record

# One run's series, a row per step: loss, grad norm, depth ratio, the top layer's
# attn_logit_max.
export_run() {
  local id=$1 file=$2 api=$server/api/v1/runs/$1
  curl -sf "$api/scalars/loss.csv?points=5000" | awk -F, 'NR > 1 { print $1 "," $5 }' | sort -t, -k1,1 >"$scratch/loss"
  curl -sf "$api/scalars/grad_norm.csv?points=5000" | awk -F, 'NR > 1 { print $1 "," $5 }' | sort -t, -k1,1 >"$scratch/grad"
  # The depth ratio as the detectors take it: the median hidden_var of the deeper half of
  # the layers over the first layer's.
  curl -sf "$api/layers/hidden_var.csv?columns=5000" |
    awk -F, 'NR > 1 { v[$1, $2] = $5; if ($2 + 1 > n[$1]) n[$1] = $2 + 1 }
      END {
        for (s in n) {
          k = 0
          for (l = int(n[s] / 2); l < n[s]; l++) {
            x = v[s, l]; j = k++
            while (j > 0 && d[j - 1] > x) { d[j] = d[j - 1]; j-- }
            d[j] = x
          }
          m = k % 2 ? d[(k - 1) / 2] : (d[k / 2 - 1] + d[k / 2]) / 2
          printf "%d,%.5g\n", s, m / v[s, 0]
        }
      }' | sort -t, -k1,1 >"$scratch/depth"
  curl -sf "$api/layers/attn_logit_max.csv?columns=5000" |
    awk -F, 'NR > 1 { if (!($1 in top) || $5 > top[$1]) top[$1] = $5 }
      END { for (s in top) printf "%d,%.5g\n", s, top[s] }' | sort -t, -k1,1 >"$scratch/attn"
  {
    echo "step,loss,grad_norm,depth_ratio,attn_logit_max"
    join -t, "$scratch/loss" "$scratch/grad" | join -t, - "$scratch/depth" | join -t, - "$scratch/attn" |
      awk -F, -v OFS=, '{ $2 = sprintf("%.5g", $2); $3 = sprintf("%.5g", $3); print }' | sort -t, -k1,1n
  } >"$file"
  echo "$file: $(($(wc -l <"$file") - 1)) steps"
}

newest_run() { curl -sf "$server/api/v1/runs" | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2; }

record() {
  case $1 in
    demo) $keel train --config proxy-small --server $server --steps 2000 \
      --checkpoint-dir "$scratch/ck-demo" --name demo ;;
    unstable) $keel train --grid stability --variant unstable --server $server --steps 600 \
      --checkpoint-dir "$scratch/ck-$1" ;;
    stable) $keel train --grid stability --variant stable --server $server \
      --checkpoint-dir "$scratch/ck-$1" ;;
    *) echo "no such run: $1 (demo, unstable or stable)" >&2; exit 2 ;;
  esac >"$scratch/train-$1.log" 2>&1 || { cat "$scratch/train-$1.log" >&2; exit 1; }
  local file=$out/demo.csv
  [ "$1" = demo ] || file=$out/stability-$1.csv
  export_run "$(newest_run)" "$file"
}

for run in "${@:-demo unstable stable}"; do
  for r in $run; do record "$r"; done
done
