#!/usr/bin/env bash
# What an idle instance costs the development broker: CPU of the broker and of every
# process of its PostgreSQL over a window, read from /proc, while one release instance
# with all its Kafka workers on has nothing to do (no requests, empty outbox). With
# --instances 0 it measures the broker alone.
#
#   ./loadtest/idle-cost.sh [--window 20] [--settle 10] [--instances 1] [--runs 1]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

window=20 settle=10 instances=1 runs=1 restarts=0
while [ $# -gt 0 ]; do
  case "$1" in
    --window) window=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --instances) instances=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --restarts) restarts=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
log "building the release binaries"
cargo build --release --locked --quiet --bins

run_id="idle-$(date +%s)-$$"
cleanup() {
  stop_instances
  forget_run "$run_id"
}
trap cleanup EXIT

run_scope "$run_id"
api_key="idle-$run_id"
if [ "$restarts" -gt 0 ]; then
  fresh_database wallet_idle
  export WALLET_DATABASE_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT/wallet_idle"
fi
urls=()
for i in $(seq 1 "$instances"); do
  start_instance "$CARGO_TARGET_DIR/release/wallet" "$WALLET_DATA_DIR/$run_id-$i.log" \
    WALLET_DEVELOPMENT=true RUST_LOG="${RUST_LOG:-warn}" \
    WALLET_API_KEYS="checkout:$api_key,funding:$api_key-funding"
  urls+=("$instance_url")
done

if [ "$restarts" -gt 0 ] && [ "$instances" -gt 0 ]; then
  log "paying for $((restarts * 15 + 10)) s while the broker is killed and started again $restarts times"
  "$CARGO_TARGET_DIR/release/load-client" --urls "$(IFS=,; echo "${urls[*]}")" \
    --api-key "$api_key" --funding-key "$api_key-funding" --run "$run_id" --scenario spread \
    --wallets 2000 --vus 50 --seconds $((restarts * 15 + 10)) --warmup 0 \
    --paid "$WALLET_DATA_DIR/$run_id-paid.txt" >"$WALLET_DATA_DIR/$run_id-client.json" 2>/dev/null &
  client=$!
  for i in $(seq 1 "$restarts"); do
    sleep 15
    pkill -9 -f "tansu broker" || true
    sleep 3
    WALLET_DEPS_BROKER=set-up RUST_LOG=warn bash scripts/deps.sh >/dev/null
    log "broker restarted ($i of $restarts)"
  done
  wait "$client" || true
  applied() {
    [ "$(sql -e "SELECT (SELECT COUNT(*) FROM wallet_idle.payments) = (SELECT COUNT(*) FROM wallet_idle.processed_events)")" = 1 ]
  }
  wait_for 300 "every payment's points" applied
fi

broker_pids() {
  pgrep -f "tansu broker" || true
  local postmaster
  postmaster=$(head -n 1 "$tansu_pg/pgdata/postmaster.pid" 2>/dev/null || true)
  if [ -n "$postmaster" ]; then echo "$postmaster"; pgrep -P "$postmaster" || true; fi
}
ticks() { # utime + stime of every broker process, in clock ticks
  local total=0 pid fields
  for pid in $(broker_pids); do
    fields=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

log "$instances idle instance(s); settling for ${settle}s"
sleep "$settle"
hz=$(getconf CLK_TCK)
for run in $(seq 1 "$runs"); do
  before=$(ticks)
  sleep "$window"
  after=$(ticks)
  python3 -c "import sys; t=($after-$before)/$hz; print(f'broker and PostgreSQL CPU: {t:.2f} s in ${window} s ({100*t/$window:.1f} % of a core), $instances idle instance(s)')"
done
