#!/usr/bin/env bash
# The tests that run on both backends, on PostgreSQL: the whole API suite, and the
# end-to-end tests with a real trainer (training, the closed loop, killed servers, the
# trainer's outbox, ablation grids, keel users). Needs KEEL_TEST_PG, as
#
#   scripts/pg-test-cluster.sh run scripts/test-postgres.sh
#
# sets it (a throwaway server in a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KEEL_TEST_PG:?KEEL_TEST_PG is not set: run this through scripts/pg-test-cluster.sh run}"
echo "tests on PostgreSQL: $(psql "$KEEL_TEST_PG" -Atc 'SHOW server_version' 2>/dev/null || echo '?')"
cargo test --locked -p keel-server --test api
cargo test --locked --test e2e -- training:: closed_loop:: faults:: users:: ablation:: outbox::
