#!/usr/bin/env bash
# Runs the whole test suite against real MariaDB, Redis and a Kafka-protocol broker on
# 127.0.0.1, installing and starting them when missing, after checking the Prometheus
# alert rules and the Grafana dashboard (scripts/check-alerts.sh), then fuzzes a running instance
# from its OpenAPI document (scripts/fuzz.sh) after checking the run command
# (scripts/check-run.sh). Safe to run twice. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The broker last: its first build runs in the background while the tests build.
export WALLET_DEPS_BROKER=later
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
start_broker_in_background

# Every test creates its own database; drop those of earlier runs.
stale=$(sql -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'wallet\\_test\\_%'")
for db in $stale; do
  sql -e "DROP DATABASE \`$db\`"
done

log "checking the alert rules and the dashboard"
./scripts/check-alerts.sh
log "building the tests"
cargo test --locked --no-run "$@"
ensure_broker

# The topics the tests made on the shared broker,
tansu_forget_topics '^t[0-9a-f]{32}\.'
# and the databases of the brokers the tests started themselves.
for db in $(tansu_psql -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tansu\_test\_%'"); do
  tansu_psql -d postgres -c "DROP DATABASE \"$db\" WITH (FORCE)"
done

export WALLET_TEST_DATABASE_SERVER="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT"
export WALLET_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export WALLET_TEST_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
# The tests that kill a broker start their own Tansu, on a database of their own.
export WALLET_TEST_TANSU="$WALLET_TANSU" WALLET_TEST_TANSU_STORAGE="$WALLET_TANSU_STORAGE"
log "running the test suite"
# A test that hangs fails the run at this bound (the suite takes a few minutes) instead
# of holding it. Before the test processes are stopped, their threads' stacks are
# printed (with gdb, when installed), to show where they hung. cargo runs in a process
# group of its own, so that stopping it stops the test binaries and every server a test
# started too.
setsid cargo test --locked "$@" &
tests=$!
trap 'kill -TERM -- "-$tests" 2>/dev/null' INT TERM
(
  sleep "${WALLET_TEST_TIMEOUT:-15m}" </dev/null >/dev/null 2>&1
  log "the test suite ran past ${WALLET_TEST_TIMEOUT:-15m}; stopping it"
  if command -v gdb >/dev/null; then
    for pid in $(pgrep -P "$tests"); do
      gdb -p "$pid" -batch -ex "thread apply all bt" 2>&1 | grep -E '^(Thread|#)' >&2 || true
    done
  fi
  kill -TERM -- "-$tests" 2>/dev/null || true
  sleep 10 </dev/null >/dev/null 2>&1
  kill -KILL -- "-$tests" 2>/dev/null || true
) &
watchdog=$!
status=0
wait "$tests" || status=$?
pkill -P "$watchdog" 2>/dev/null || true
kill "$watchdog" 2>/dev/null || true
[ "$status" -eq 0 ] || exit "$status"
# The README's run command, with every dependency already up (as for a second checkout).
./scripts/check-run.sh
# Schema-driven fuzzing of a running instance (bounded: a few hundred cases).
./scripts/fuzz.sh "${WALLET_FUZZ_EXAMPLES:-10}"
