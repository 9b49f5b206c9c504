#!/usr/bin/env bash
# The benchmark matrix, in one go on this machine: hot wallet and spread wallets, each on
# the Redis-lock path and on the MySQL FOR UPDATE path, plus the database floor (a bare
# conditional UPDATE at the same concurrency). Every cell runs --runs times (default 2)
# so their agreement can be judged. Writes BENCHMARKS.md.
#
#   ./loadtest/bench.sh [--duration 30s] [--warmup 5s] [--runs 2] [--wallets 10000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=30s warmup=5s runs=2 wallets=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --wallets) wallets=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command_line="./loadtest/bench.sh --duration $duration --warmup $warmup --runs $runs --wallets $wallets"
out="loadtest/results/bench-$(date +%s)"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
secs() { python3 -c "import re,sys; print(sum(int(n)*{'s':1,'m':60,'h':3600}[u] for n,u in re.findall(r'(\d+)([smh])', sys.argv[1])))" "$1"; }

for run in $(seq 1 "$runs"); do
  for scenario in hot-wallet spread; do
    for mode in redis mysql; do
      echo "--- run $run: $scenario, $mode"
      # The matrix measures the lock paths, not the rate limiter: a rate no cell reaches.
      ./loadtest/run.sh "$scenario" --lock-mode "$mode" --no-kafka --duration "$duration" --warmup "$warmup" \
        --wallets "$wallets" --rate 100000 | tee "$out/run.log"
      results=$(grep '^results: ' "$out/run.log" | tail -n 1 | cut -d' ' -f2)
      cp "$results/report.json" "$out/$scenario-$mode-$run.json"
    done
  done
  # The floor, on the same database server (scripts/deps.sh started it for run.sh).
  source scripts/deps.sh >/dev/null
  for wallets_floor in 1 "$wallets"; do
    name=$([ "$wallets_floor" = 1 ] && echo hot-wallet || echo spread)
    echo "--- run $run: $name, database floor"
    WALLET_DATABASE_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT/wallet_load" \
      "$CARGO_TARGET_DIR/release/db-floor" --concurrency 150 --connections 64 \
      --seconds "$(secs "$duration")" --warmup "$(secs "$warmup")" --wallets "$wallets_floor" \
      | tee "$out/$name-floor-$run.json"
  done
done

python3 - "$out" "$runs" "$command_line" "$wallets" <<'PY'
import json, os, platform, subprocess, sys, datetime
out, runs, command, wallets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(name):
    return json.load(open(os.path.join(out, name)))
def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
mem = int(open("/proc/meminfo").readline().split()[1]) // (1024 * 1024)
rows, rates = [], {}
for scenario in ["hot-wallet", "spread"]:
    for mode, label in [("redis", "Redis lock"), ("mysql", "MySQL FOR UPDATE"), ("floor", "database floor")]:
        cells = [load(f"{scenario}-{mode}-{r}.json") for r in range(1, runs + 1)]
        rate = [c.get("debitsPerSecond", c.get("updatesPerSecond", 0)) for c in cells]
        mean = sum(rate) / len(rate)
        spread_pct = (max(rate) - min(rate)) / mean * 100 if mean else 0
        rates[(scenario, mode)] = mean
        last = cells[-1]
        errors = sum(c.get("errors", 0) for c in cells)
        rows.append(f"| {scenario} | {label} | {mean:,.0f} | {' / '.join(f'{r:,.0f}' for r in rate)} ({spread_pct:.1f} %) "
                    f"| {last['p50']:.1f} | {last['p95']:.1f} | {last['p99']:.1f} | {errors} |")
ratios = []
for scenario, goal in [("hot-wallet", 0.8), ("spread", 0.9)]:
    r, m, f = rates[(scenario, "redis")], rates[(scenario, "mysql")], rates[(scenario, "floor")]
    ratios.append(f"| {scenario} | {r / m:.2f} (goal ≥ {goal}) | {r / f:.2f} | {m / f:.2f} |")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
table = "\n".join(rows)
ratio_table = "\n".join(ratios)
text = f"""## Latest matrix

- machine: {os.cpu_count()} cores ({cpu()}), {mem} GiB; MariaDB, Redis, k6 and the service all on it
- date: {now}; commit: `{commit}`
- command: `{command}`
- each cell: 2 release instances, 150 VUs, Kafka workers off, {runs} runs; debits/s over the measured part only
  (after warm-up, set-up excluded); latency percentiles from the last run; spread = {wallets} wallets

| scenario | path | debits/s (mean) | each run (max−min / mean) | p50 ms | p95 ms | p99 ms | errors |
|---|---|---|---|---|---|---|---|
{table}

| scenario | Redis path / FOR UPDATE path | Redis path / floor | FOR UPDATE path / floor |
|---|---|---|---|
{ratio_table}
"""
open(os.path.join(out, "matrix.md"), "w").write(text)
print(text)
PY
echo "matrix: $out/matrix.md"
