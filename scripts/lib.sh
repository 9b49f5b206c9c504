#!/usr/bin/env bash
# What the scripts share, sourced by scripts/deps.sh (and so by every script that
# sources it): logging, waiting for a condition, a free port, SQL as the wallet user,
# the environment of an instance without Kafka workers, and starting instances.

log() { printf '\033[1;34m[wallet]\033[0m %s\n' "$*"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $((seconds * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "$what did not come up within ${seconds}s"
  return 1
}

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# sql [ARGS...]: the mariadb client as the wallet user, without column names, e.g.
# `sql wallet_load -e 'SELECT COUNT(*) FROM payments'`.
sql() { mariadb --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" -u "$DB_USER" -p"$DB_PASSWORD" -N "$@"; }

# fresh_database NAME: an empty database NAME, dropped first if it exists.
fresh_database() { sql -e "DROP DATABASE IF EXISTS \`$1\`; CREATE DATABASE \`$1\`"; }

# The environment of an instance with every Kafka worker off: it takes payments, and its
# events wait in the outbox.
no_kafka=(WALLET_KAFKA_CREATE_TOPICS=false WALLET_OUTBOX_RELAY=false WALLET_POINTS_CONSUMER=false
  WALLET_REQUESTS_CONSUMER=false WALLET_DLT_CONSUMER=false)

# start_instance BINARY LOG [VAR=VALUE...]: one instance of the service on a free port in
# the background, with the given variables on top of this shell's; waits until it is
# ready. Its URL is left in $instance_url and its pid added to instance_pids.
instance_pids=()
start_instance() {
  local binary=$1 logfile=$2 port
  shift 2
  port=$(free_port)
  env WALLET_HTTP_ADDR="127.0.0.1:$port" "$@" "$binary" >"$logfile" 2>&1 </dev/null &
  instance_pids+=($!)
  instance_url="http://127.0.0.1:$port"
  if ! wait_for 60 "the instance logging to $logfile" curl -fsS "$instance_url/readyz"; then
    tail -n 20 "$logfile" >&2
    return 1
  fi
}

# Stops every instance start_instance started and waits for them.
stop_instances() {
  local pid
  for pid in "${instance_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${instance_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  instance_pids=()
}

# limit_cpus PID CPUS: the process PID (all its threads) may use at most CPUS cores
# (0.5, 1, …), in a cgroup of its own with a CPU bandwidth quota over 10 ms periods
# (short, so a throttled server stalls milliseconds, not a tenth of a second); its
# earlier cgroup is kept for unlimit_cpus. Needs root and the cgroup cpu controller,
# v2 (cpu.max) or v1 (cpu.cfs_quota_us).
cpu_limit_group=""
# The group limit_cpus makes: under cgroup v2, or under v1's cpu controller.
cpu_limit_v2=/sys/fs/cgroup/wallet-cpu-limit cpu_limit_v1=/sys/fs/cgroup/cpu/wallet-cpu-limit
limit_cpus() {
  local pid=$1 cpus=$2 period=10000 quota
  quota=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 10000))' "$cpus")
  if [ "$quota" -lt 1000 ]; then log "--db-cpus: at least 0.1 cores"; return 1; fi
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    cpu_limit_origin="/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$pid/cgroup")"
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    cpu_limit_group=$cpu_limit_v2
    mkdir -p "$cpu_limit_group"
    echo "$quota $period" >"$cpu_limit_group/cpu.max"
  elif [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    cpu_limit_origin="/sys/fs/cgroup/cpu$(sed -n 's/^[0-9]*:\([^:]*,\)\{0,1\}cpu\(,[^:]*\)\{0,1\}:\(.*\)$/\3/p' "/proc/$pid/cgroup")"
    cpu_limit_group=$cpu_limit_v1
    mkdir -p "$cpu_limit_group"
    echo "$period" >"$cpu_limit_group/cpu.cfs_period_us"
    echo "$quota" >"$cpu_limit_group/cpu.cfs_quota_us"
  else
    log "no cgroup cpu controller here (/sys/fs/cgroup): cannot limit a process's cores"
    return 1
  fi
  echo "$pid" >"$cpu_limit_group/cgroup.procs"
}

# unlimit_cpus PID: moves PID back to the cgroup it was in before limit_cpus.
unlimit_cpus() {
  [ -n "$cpu_limit_group" ] || return 0
  if [ -n "${1:-}" ]; then echo "$1" >"${cpu_limit_origin%/}/cgroup.procs" 2>/dev/null || true; fi
  rmdir "$cpu_limit_group" 2>/dev/null || true
  cpu_limit_group=""
}

# clear_cpu_limit PID: a process that a killed run left in limit_cpus's cgroup goes back
# to the group above it. Called before limit_cpus, so that the group it keeps for
# unlimit_cpus is never its own.
clear_cpu_limit() {
  local group
  for group in "$cpu_limit_v2" "$cpu_limit_v1"; do
    if [ -f "$group/cgroup.procs" ] && grep -qx "$1" "$group/cgroup.procs"; then
      echo "$1" >"$(dirname "$group")/cgroup.procs" 2>/dev/null || true
      rmdir "$group" 2>/dev/null || true
      log "pid $1 was still limited by an earlier run: no longer"
    fi
  done
}
