#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests: Debian's postgresql, a cluster made with initdb in
# one folder, listening only on a unix socket there (no TCP), trust authentication, fsync off;
# torn down without a trace.
#
#   scripts/pg-test-cluster.sh up DIR      start it; prints `export KEEL_TEST_PG=postgres:///…`
#   scripts/pg-test-cluster.sh down DIR    stop it and remove DIR
#   scripts/pg-test-cluster.sh run CMD…    up in a temporary folder, CMD with KEEL_TEST_PG set,
#                                          down (whatever CMD's exit status); exits with CMD's
#
# Installs postgresql with apt-get when it is missing. PostgreSQL's server refuses to run as
# root: as root, the cluster belongs to the `postgres` user the package makes, and the server
# runs as that user; clients connect as the database user `keel` through the socket.
set -euo pipefail

bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

need() {
  [ -n "$(bin || true)" ] && return
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: postgresql" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
}

# Runs a server tool as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

up() {
  local dir=$1
  need
  local b port
  b=$(bin)
  mkdir -p "$dir/sock"
  dir=$(cd "$dir" && pwd)
  [ "$(id -u)" -ne 0 ] || chown -R postgres: "$dir"
  # The port only names the socket file: nothing listens on TCP.
  port=$(free_port)
  as_owner "$b/initdb" -D "$dir/data" -U keel -A trust -E UTF8 --no-locale -N >"$dir/initdb.log" 2>&1 || {
    echo "initdb failed:" >&2
    cat "$dir/initdb.log" >&2
    exit 1
  }
  as_owner "$b/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir/sock -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    echo "the PostgreSQL test server did not start:" >&2
    tail -n 20 "$dir/server.log" >&2 || true
    exit 1
  }
  "$b/createdb" -h "$dir/sock" -p "$port" -U keel keel
  echo "$port" >"$dir/port"
  echo "export KEEL_TEST_PG='postgres:///keel?host=$dir/sock&port=$port&user=keel'"
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    local b
    b=$(bin)
    as_owner "$b/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up DIR}" ;;
  down) down "${2:?usage: $0 down DIR}" ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
    dir=$(mktemp -d -t keel-pg.XXXXXX)
    trap 'down "$dir"' EXIT
    eval "$(up "$dir")"
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
    ;;
  *)
    echo "usage: $0 up DIR | down DIR | run CMD..." >&2
    exit 2
    ;;
esac
