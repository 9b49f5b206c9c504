#!/usr/bin/env bash
# The benchmark matrix, in one go on this machine: the hot wallet, spread wallets and the
# mixed workload (hot-spread: a quarter of the debits on one hot wallet, the rest
# spread), each on the batched Redis-lock path (group commit, the default), the unbatched Redis path
# (WALLET_BATCH_MAX=1), the per-request MySQL FOR UPDATE path (WALLET_LOCK_MODE=mysql,
# WALLET_BATCH_MAX=1: one transaction per request, as a Spring + Redisson service runs
# it; not for the mixed workload) and the batched FOR UPDATE path (what the fallback does while Redis is down),
# plus the database floor (a bare conditional UPDATE at the same concurrency), and the
# hold flow (hold, then capture or void) on the spread wallets, batched and FOR UPDATE
# per request, beside the plain debits, and the batched Redis path on a local Redis
# Cluster (three primaries with a replica each) beside it on one Redis node. Every
# cell runs --runs times (default 2) so their agreement can be judged, and reports the
# CPU time per debit of the service, of MariaDB and of Redis (every node of the cluster
# in its cells) from /proc. With --db-cpus N (0.5 unless 0 is given), the batched
# Redis path and the batched row locks run once more with MariaDB limited to N cores
# (loadtest/run.sh --db-cpus), as where the database is the bottleneck and the
# services around it have room. Writes the matrix to loadtest/results/bench-*/matrix.md.
#
#   ./loadtest/bench.sh [--duration 30s] [--warmup 5s] [--runs 2] [--wallets 10000]
#                       [--client native|k6] [--db-cpus 0.5]
#
# The load comes from load-client (src/bin/load-client.rs), a closed loop of 150 virtual
# users that costs a few µs of CPU per request; --client k6 drives the same scenarios
# with the k6 scripts instead, whose CPU per request is larger than the service's own
# on the batched path and so takes its cores on a two-core machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=30s warmup=5s runs=2 wallets=10000 client=native db_cpus=0.5
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --wallets) wallets=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    --db-cpus) db_cpus=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command_line="./loadtest/bench.sh --duration $duration --warmup $warmup --runs $runs --wallets $wallets --client $client --db-cpus $db_cpus"
db_bound=$(python3 -c 'import sys; print(int(float(sys.argv[1]) > 0))' "$db_cpus")
out="loadtest/results/bench-$(date +%s)"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
secs() { python3 -c "import re,sys; print(sum(int(n)*{'s':1,'m':60,'h':3600}[u] for n,u in re.findall(r'(\d+)([smh])', sys.argv[1])))" "$1"; }

# cell name → run.sh options
declare -A cells=(
  [batched]="--lock-mode redis"
  [unbatched]="--lock-mode redis --batch-max 1"
  [forupdate]="--lock-mode mysql --batch-max 1"
  [fallback]="--lock-mode mysql"
  [cluster]="--lock-mode redis --redis-cluster"
  [db-batched]="--lock-mode redis --db-cpus $db_cpus"
  [db-fallback]="--lock-mode mysql --db-cpus $db_cpus"
)
db_cells=""
if [ "$db_bound" = 1 ]; then db_cells="db-batched db-fallback"; fi
for run in $(seq 1 "$runs"); do
  for scenario in hot-wallet spread hot-spread; do
    for cell in batched cluster unbatched forupdate fallback $db_cells; do
      [ "$scenario/$cell" = hot-spread/unbatched ] && continue
      echo "--- run $run: $scenario, $cell"
      # The matrix measures the lock paths, not the rate limiter: a rate no cell reaches.
      # shellcheck disable=SC2086
      ./loadtest/run.sh "$scenario" ${cells[$cell]} --client "$client" --no-kafka --duration "$duration" --warmup "$warmup" \
        --wallets "$wallets" --rate 100000 | tee "$out/run.log"
      results=$(grep '^results: ' "$out/run.log" | tail -n 1 | cut -d' ' -f2)
      cp "$results/report.json" "$out/$scenario-$cell-$run.json"
    done
  done
  for cell in batched forupdate; do
    echo "--- run $run: holds, $cell"
    # shellcheck disable=SC2086
    ./loadtest/run.sh holds ${cells[$cell]} --client "$client" --no-kafka --duration "$duration" --warmup "$warmup" \
      --wallets "$wallets" --rate 100000 | tee "$out/run.log"
    results=$(grep '^results: ' "$out/run.log" | tail -n 1 | cut -d' ' -f2)
    cp "$results/report.json" "$out/holds-$cell-$run.json"
  done
  # The floor, on the same database server (scripts/deps.sh started it for run.sh).
  source scripts/deps.sh >/dev/null
  db_pid=$(pgrep -f -- "--port=$DB_PORT" | head -n 1 || pgrep -xo mariadbd || true)
  for wallets_floor in 1 "$wallets"; do
    name=$([ "$wallets_floor" = 1 ] && echo hot-wallet || echo spread)
    echo "--- run $run: $name, database floor"
    WALLET_DATABASE_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT/wallet_load" \
      python3 - "$db_pid" "$out/$name-floor-$run.json" "$CARGO_TARGET_DIR/release/db-floor" \
      --concurrency 150 --connections 64 --seconds "$(secs "$duration")" --warmup "$(secs "$warmup")" \
      --wallets "$wallets_floor" <<'PY'
# Runs db-floor and adds the CPU per update of the client and of MariaDB over its whole
# run (warm-up included), at the measured rate.
import json, os, resource, subprocess, sys
db_pid, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
tick = os.sysconf("SC_CLK_TCK")
def db_ticks():
    try:
        fields = open(f"/proc/{db_pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0
before = db_ticks()
report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
db = (db_ticks() - before) / tick
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
secs = float(cmd[cmd.index("--seconds") + 1]) + float(cmd[cmd.index("--warmup") + 1])
updates = report["updatesPerSecond"] * secs
report.update(serviceCpuUsPerDebit=(usage.ru_utime + usage.ru_stime) * 1e6 / updates,
              dbCpuUsPerDebit=db * 1e6 / updates)
json.dump(report, open(out, "w"))
print(json.dumps(report))
PY
  done
done

python3 - "$out" "$runs" "$command_line" "$wallets" "$client" "$db_cpus" "$db_bound" <<'PY'
import json, os, platform, subprocess, sys, datetime
out, runs, command, wallets, client, db_cpus, db_bound = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7] == "1"
def load(name):
    return json.load(open(os.path.join(out, name)))
def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
mem = int(open("/proc/meminfo").readline().split()[1]) // (1024 * 1024)
paths = [("batched", "Redis lock, batched (default)"), ("unbatched", "Redis lock, unbatched"),
         ("forupdate", "FOR UPDATE per request"), ("fallback", "FOR UPDATE, batched (fallback)"),
         ("floor", "database floor"), ("cluster", "Redis Cluster, batched")]
db_paths = [("db-batched", "Redis lock, batched (default)"), ("db-fallback", "FOR UPDATE, batched (fallback)")]
rows, db_rows, rate, p99, svc, db, rds, gen = [], [], {}, {}, {}, {}, {}, {}
for scenario in ["hot-wallet", "spread", "hot-spread"]:
    for cell, label in paths + (db_paths if db_bound else []):
        if scenario == "hot-spread" and cell in ("unbatched", "floor"):
            continue
        cells = [load(f"{scenario}-{cell}-{r}.json") for r in range(1, runs + 1)]
        rates = [c.get("debitsPerSecond", c.get("updatesPerSecond", 0)) for c in cells]
        m = mean(rates)
        spread_pct = (max(rates) - min(rates)) / m * 100 if m else 0
        key = (scenario, cell)
        rate[key], p99[key] = m, cells[-1]["p99"]
        svc[key] = mean([c.get("serviceCpuUsPerDebit") for c in cells])
        db[key] = mean([c.get("dbCpuUsPerDebit") for c in cells])
        rds[key] = mean([c.get("redisCpuUsPerDebit") for c in cells])
        rds_cell = "—" if rds[key] != rds[key] else f"{rds[key]:,.0f}"
        gen[key] = mean([c.get("clientCpuUsPerRequest") for c in cells])
        gen_cell = "—" if gen[key] != gen[key] else f"{gen[key]:,.0f}"
        errors = sum(c.get("errors", 0) for c in cells)
        last = cells[-1]
        (db_rows if cell.startswith("db-") else rows).append(f"| {scenario} | {label} | {m:,.0f} | {' / '.join(f'{r:,.0f}' for r in rates)} ({spread_pct:.1f} %) "
                    f"| {last['p50']:.1f} | {last['p95']:.1f} | {last['p99']:.1f} | {svc[key]:,.0f} | {db[key]:,.0f} | {rds_cell} | {gen_cell} | {errors} |")
def target(name, value, goal, ok):
    return f"| {name} | {value} | {goal} | {'met' if ok else 'not met'} |"
h, s, x = "hot-wallet", "spread", "hot-spread"
targets = [
    target(f"{sc}: batched Redis ÷ batched row locks only", f"{rate[(sc, 'batched')] / rate[(sc, 'fallback')]:.2f}", "≥ 1.3",
           rate[(sc, 'batched')] >= 1.3 * rate[(sc, 'fallback')]) for sc in [h, s, x]
] + [
    target("spread: CPU per debit, service + MariaDB + Redis (batched)",
           f"{svc[(s, 'batched')] + db[(s, 'batched')] + rds[(s, 'batched')]:,.0f} µs", "≤ 150 µs",
           svc[(s, 'batched')] + db[(s, 'batched')] + rds[(s, 'batched')] <= 150),
    target("spread: MariaDB CPU per debit (batched)", f"{db[(s, 'batched')]:,.0f} µs", "≤ 50 µs", db[(s, 'batched')] <= 50),
    target("hot wallet p99, batched (last run)", f"{p99[(h, 'batched')]:.1f} ms", "< 25 ms", p99[(h, 'batched')] < 25),
    target("hot-spread p99, batched (last run)", f"{p99[(x, 'batched')]:.1f} ms", "< 50 ms", p99[(x, 'batched')] < 50),
    target("hot wallet: batched ÷ FOR UPDATE per request", f"{rate[(h, 'batched')] / rate[(h, 'forupdate')]:.2f}", "≥ 3",
           rate[(h, 'batched')] >= 3 * rate[(h, 'forupdate')]),
    target("hot wallet ÷ spread, both batched", f"{rate[(h, 'batched')] / rate[(s, 'batched')]:.2f}", "≥ 0.9",
           rate[(h, 'batched')] >= 0.9 * rate[(s, 'batched')]),
    target("spread: batched ÷ FOR UPDATE per request", f"{rate[(s, 'batched')] / rate[(s, 'forupdate')]:.2f}", "≥ 2",
           rate[(s, 'batched')] >= 2 * rate[(s, 'forupdate')]),
    target("hot wallet: batched ÷ single-row floor", f"{rate[(h, 'batched')] / rate[(h, 'floor')]:.2f}", "> 1",
           rate[(h, 'batched')] > rate[(h, 'floor')]),
]
db_targets = [
    target(f"{sc}, MariaDB at {db_cpus} cores: batched Redis ÷ batched row locks only",
           f"{rate[(sc, 'db-batched')] / rate[(sc, 'db-fallback')]:.2f}", "≥ 1.3",
           rate[(sc, 'db-batched')] >= 1.3 * rate[(sc, 'db-fallback')]) for sc in [h, s, x]
] if db_bound else []
for sc in [h, s, x]:
    targets += [
        target(f"{sc}: Redis Cluster ÷ one Redis node, batched", f"{rate[(sc, 'cluster')] / rate[(sc, 'batched')]:.2f}", "≥ 0.8",
               rate[(sc, 'cluster')] >= 0.8 * rate[(sc, 'batched')]),
        target(f"{sc}: Redis Cluster batched ÷ FOR UPDATE per request", f"{rate[(sc, 'cluster')] / rate[(sc, 'forupdate')]:.2f}",
               f"≥ {rate[(sc, 'batched')] / rate[(sc, 'forupdate')]:.2f} × 0.8 (one node's margin)",
               rate[(sc, 'cluster')] >= 0.8 * rate[(sc, 'batched')]),
    ]
hold_rows = []
for cell, label in [paths[0], paths[2]]:
    cells = [load(f"holds-{cell}-{r}.json") for r in range(1, runs + 1)]
    rates = [c["debitsPerSecond"] for c in cells]
    m = mean(rates)
    spread_pct = (max(rates) - min(rates)) / m * 100 if m else 0
    last = cells[-1]
    requests = sum(n for st, n in last["statuses"].items()) / (last["debits"] / last["debitsPerSecond"]) if last["debits"] else 0
    hold_rows.append(f"| holds | {label} | {m:,.0f} | {' / '.join(f'{r:,.0f}' for r in rates)} ({spread_pct:.1f} %) "
                     f"| {requests:,.0f} | {rate[(s, cell)]:,.0f} | {last['p50']:.1f} | {last['p95']:.1f} | {last['p99']:.1f} "
                     f"| {mean([c.get('serviceCpuUsPerDebit') for c in cells]):,.0f} | {mean([c.get('dbCpuUsPerDebit') for c in cells]):,.0f} "
                     f"| {sum(c.get('errors', 0) for c in cells)} |")
cpu_rows = []
for scenario in [h, s]:
    for cell, label in paths[1:4]:
        cpu_rows.append(f"| {scenario} | {label} | {svc[(scenario, cell)] / svc[(scenario, 'batched')]:.2f} "
                        f"| {db[(scenario, cell)] / db[(scenario, 'batched')]:.2f} |")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
# The heads of the debit tables (every path; the database-bound cells) and of their targets.
debit_head = ("| scenario | path | debits/s (mean) | each run (max−min / mean) | p50 ms | p95 ms | p99 ms "
              "| service CPU µs/debit | MariaDB CPU µs/debit | Redis CPU µs/debit | load client CPU µs/request | errors |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
target_head = "| target (same run) | measured | goal | |\n|---|---|---|---|"
nl = "\n"
text = f"""## Latest matrix

- machine: {os.cpu_count()} cores ({cpu()}), {mem} GiB; MariaDB, Redis, the load client ({"load-client" if client == "native" else "k6"}) and the service all on it
- date: {now}; commit: `{commit}`
- command: `{command}`
- each cell: 2 release instances, 150 VUs, Kafka workers off, {runs} runs; debits/s over the measured part only
  (after warm-up, set-up excluded); latency percentiles from the last run; spread = {wallets} wallets;
  hot-spread = a quarter of the debits on one hot wallet, the rest on the {wallets} spread wallets
- CPU per debit: the kernel's accounting (`/proc/<pid>/stat`, user + system) of the two instances, of
  MariaDB and of Redis (all six nodes in the cluster cells, replicas included) over the measured part, divided by the debits written in it; mean of the runs. For the floor,
  the `db-floor` client and MariaDB over its whole run at its measured rate. The load client's own CPU per
  request (load-client only) is in its column; k6's is not measured.

{debit_head}
{nl.join(rows)}

{target_head}
{nl.join(targets)}

The hold flow on the same {wallets} wallets: each turn is a hold and then its capture (90 %, four turns
in five) or void, two requests; a settled hold counts once. CPU is per ledger entry (one per request).

| scenario | path | settled holds/s (mean) | each run (max−min / mean) | requests/s (last run) | spread debits/s, same path | p50 ms | p95 ms | p99 ms | service CPU µs/request | MariaDB CPU µs/request | errors |
|---|---|---|---|---|---|---|---|---|---|---|---|
{nl.join(hold_rows)}

{f'''Where the database is the bottleneck: the same batched paths with MariaDB limited to {db_cpus} cores
(`loadtest/run.sh --db-cpus {db_cpus}`), the instances, Redis and the load client on the rest.

{debit_head}
{nl.join(db_rows)}

{target_head}
{nl.join(db_targets)}
''' if db_bound else ''}
CPU per debit of each path relative to the batched Redis path (same scenario):

| scenario | path | service CPU × | MariaDB CPU × |
|---|---|---|---|
{nl.join(cpu_rows)}
"""
open(os.path.join(out, "matrix.md"), "w").write(text)
print(text)
PY
echo "matrix: $out/matrix.md"
