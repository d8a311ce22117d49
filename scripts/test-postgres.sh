#!/usr/bin/env bash
# The tests that run on both backends, on PostgreSQL: the whole API suite, and every
# end-to-end test but those of SQLite files themselves (`keel backup`, one server per file)
# and those that bring their own PostgreSQL anyway (several servers, `keel migrate`): real
# trainers (candle, PyTorch, SLURM jobs), launches, the browser, imports. Needs KEEL_TEST_PG, as
#
#   scripts/pg-test-cluster.sh run scripts/test-postgres.sh
#
# sets it (a throwaway server in a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KEEL_TEST_PG:?KEEL_TEST_PG is not set: run this through scripts/pg-test-cluster.sh run}"
echo "tests on PostgreSQL: $(psql "$KEEL_TEST_PG" -Atc 'SHOW server_version' 2>/dev/null || echo '?')"
cargo test --locked -p keel-server --test api
cargo test --locked --test e2e -- --skip backup:: --skip database:: --skip migrate:: --skip replicas::
