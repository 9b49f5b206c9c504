#!/usr/bin/env bash
# The outbox under a backlog. Builds one of at least --events real payment events with the
# relay off (load-client paying on the spread wallets through two instances), then starts
# one instance with the relay and the points consumer on and measures how fast the relay
# publishes the backlog and the points consumer applies it, every second; ends with the
# ledger audit (outbox drained, every wallet's points exact). Exits non-zero when the
# backlog is not drained and applied within --timeout seconds or an invariant fails.
#
#   ./loadtest/drain.sh [--events 100000] [--brokers 127.0.0.1:9092] [--timeout 600]
#
# --brokers points the relay at another Kafka-protocol broker than the one
# scripts/deps.sh starts. Results go to loadtest/results/drain-<run>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=100000 brokers= timeout=600
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --brokers) brokers=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
brokers="${brokers:-127.0.0.1:$KAFKA_PORT}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
log "building release binaries"
cargo build --release --locked --quiet --bins
bin="$CARGO_TARGET_DIR/release"

run_id="$(date +%s)-$$"
api_key="drain-$run_id"
results="loadtest/results/drain-$run_id"
mkdir -p "$results"
drain_sql() { sql wallet_drain -e "$1"; }
fresh_database wallet_drain
export WALLET_DATABASE_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT/wallet_drain"
export WALLET_API_KEYS="checkout:$api_key,funding:$api_key-funding"
export WALLET_KAFKA_BROKERS="$brokers"
run_scope "drain-$run_id"
export WALLET_RATE_LIMIT_PER_SECOND=100000 WALLET_RATE_LIMIT_BURST=10001 RUST_LOG="${RUST_LOG:-warn}"

cleanup() {
  stop_instances
  forget_run "drain-$run_id"
}
trap cleanup EXIT

# start NAME [VAR=VALUE…]: one instance in the background, its URL in $url.
start() {
  local name=$1
  shift
  start_instance "$bin/wallet" "$results/$name.log" "$@"
  url=$instance_url
}

# 1. The backlog: payments with every Kafka worker off.
start writer-1 "${no_kafka[@]}"; urls=$url
start writer-2 "${no_kafka[@]}"; urls="$urls,$url"
log "building a backlog of at least $events events (relay off)"
round=0
while [ "$(drain_sql 'SELECT COUNT(*) FROM outbox_events')" -lt "$events" ]; do
  round=$((round + 1))
  "$bin/load-client" --urls "$urls" --api-key "$api_key" --funding-key "$api_key-funding" \
    --run "$run_id" --scenario spread --wallets 10000 --vus 150 --seconds 10 --warmup 0 \
    >"$results/writer-$round.json" 2>>"$results/writer.log"
done
stop_instances
backlog=$(drain_sql 'SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL')
log "backlog: $backlog events; starting the relay and the points consumer against $brokers"

# 2. The drain: one instance with the relay and the points consumer.
export DB_PORT DB_USER DB_PASSWORD
started=$(date +%s.%N)
start relay WALLET_REQUESTS_CONSUMER=false WALLET_DLT_CONSUMER=false
python3 - "$backlog" "$timeout" "$started" "$results/drain.json" <<'PY' || drained=no
import json, subprocess, sys, time
backlog, timeout, started, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def counts():
    q = ("SELECT (SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL), "
         "(SELECT COUNT(*) FROM processed_events)")
    import os
    row = subprocess.run(["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", os.environ.get("DB_PORT", "3306"),
                          "-u", os.environ.get("DB_USER", "wallet"), f"-p{os.environ.get('DB_PASSWORD', 'wallet')}",
                          "-N", "wallet_drain", "-e", q], capture_output=True, text=True, check=True).stdout.split()
    return int(row[0]), int(row[1])
samples, published_at, applied_at = [], None, None
last = (backlog, 0, started)
while time.time() - started < timeout:
    time.sleep(1)
    unsent, applied = counts()
    now = time.time()
    samples.append({"t": round(now - started, 1), "unsent": unsent, "applied": applied})
    if now - last[2] >= 5:
        rate = (last[0] - unsent) / (now - last[2])
        print(f"  t={now - started:6.1f}s  unsent {unsent:>7}  applied {applied:>7}  relay {rate:,.0f}/s", flush=True)
        last = (unsent, applied, now)
    if published_at is None and unsent == 0:
        published_at = now
    if applied >= backlog and unsent == 0:
        applied_at = now
        break
report = {"backlog": backlog, "publishedSeconds": published_at and published_at - started,
          "appliedSeconds": applied_at and applied_at - started,
          "publishedPerSecond": published_at and backlog / (published_at - started),
          "appliedPerSecond": applied_at and backlog / (applied_at - started), "samples": samples}
json.dump(report, open(out, "w"))
if published_at:
    print(f"published: {backlog} events in {published_at - started:.1f} s ({backlog / (published_at - started):,.0f}/s, instance start included)")
if applied_at:
    print(f"applied by the points consumer: {applied_at - started:.1f} s ({backlog / (applied_at - started):,.0f}/s)")
sys.exit(0 if applied_at else 1)
PY
if [ "${drained:-yes}" = no ]; then
  log "the backlog was not drained and applied within ${timeout}s; errors in the relay's log:"
  grep -c -i -E "error|warn" "$results/relay.log" || true
  grep -i -E "error|warn" "$results/relay.log" | tail -n 5 || true
fi
set +e
"$bin/ledger-audit" --events >"$results/audit.json"
audit_status=$?
set -e
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); print("ledger:", a["payments"], "payments, outbox pending", a["outboxPending"], "points mismatches", a["pointsMismatches"]); print("invariants:", "all hold" if not a["violations"] else a["violations"])' "$results/audit.json"
echo "results: $results"
[ "${drained:-yes}" = yes ] && [ "$audit_status" -eq 0 ]
