#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests: munge, slurmctld and slurmd from
# Debian's slurm-wlm and munge, everything (config, keys, sockets, state, logs) in one folder,
# on free local ports, torn down without a trace.
#
#   scripts/slurm-test-cluster.sh up DIR      start it; prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-test-cluster.sh down DIR    stop it and remove DIR
#   scripts/slurm-test-cluster.sh run CMD…    up in a temporary folder, CMD with SLURM_CONF set,
#                                             down (whatever CMD's exit status); exits with CMD's
#
# Installs slurm-wlm and munge with apt-get when they are missing. The daemons run as the
# calling user (root in CI; SlurmUser is whoever runs this). Jobs stay visible to `scontrol
# show job` for an hour after they end (MinJobAge), as there is no accounting database.
set -euo pipefail

need() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

up() {
  local dir=$1
  need
  mkdir -p "$dir"/{state,spool,log,munge}
  dir=$(cd "$dir" && pwd)
  chmod 700 "$dir/munge"
  local user host cpus mem ctld_port slurmd_port
  user=$(id -un)
  host=$(hostname -s)
  cpus=$(nproc)
  # Memory the node offers: most of what is free, in MB.
  mem=$(awk '/MemAvailable/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
  ctld_port=$(free_port)
  slurmd_port=$(free_port)

  # munge: a fresh key, its socket in the folder (root needs --force).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  local force=()
  [ "$(id -u)" -ne 0 ] || force=(--force)
  munged "${force[@]}" --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munge.seed"

  cat >"$dir/slurm.conf" <<EOF
ClusterName=keel-test
SlurmctldHost=$host
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=30
SchedulerParameters=sched_interval=1
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  # Ready when the node takes jobs.
  local state=""
  for _ in $(seq 1 150); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 0.2
  done
  case "$state" in
    idle*|mix*|alloc*) ;;
    *)
      echo "the SLURM test cluster did not come up (node state: ${state:-none}); logs in $dir/log:" >&2
      tail -n 20 "$dir"/log/*.log >&2 || true
      down "$dir"
      exit 1
      ;;
  esac
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/slurm.conf" ]; then
    SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munge/munged.pid"
  rm -rf "$dir"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up DIR}" ;;
  down) down "${2:?usage: $0 down DIR}" ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
    dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-slurm.XXXXXX")
    trap 'down "$dir"' EXIT
    eval "$(up "$dir")"
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  *)
    echo "usage: $0 up DIR | down DIR | run CMD..." >&2
    exit 2
    ;;
esac
