#!/usr/bin/env bash
# Starts the wallet service on 127.0.0.1:8080 with everything it needs: installs and
# starts MariaDB and Redis when missing while it builds a release binary, applies the
# migrations (at start-up) and prints how to call it. The Kafka-protocol broker is set
# up afterwards in the background when it is not running yet (its first build takes
# about 11 minutes): payments are taken meanwhile, their events wait in the outbox, and
# the relay publishes them once the broker answers. Safe to run twice: dependencies
# that run are reused, and a service started by an earlier run is replaced.
#
#   ./scripts/run.sh               # in the background, logs in .data/wallet.log
#   ./scripts/run.sh --foreground  # in this terminal, ctrl-c stops it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The build needs no server: it runs while MariaDB and Redis are installed and started.
build_log=$(mktemp)
cargo build --release --locked --quiet >"$build_log" 2>&1 &
build=$!
export WALLET_DEPS_BROKER=later
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
log "building the service (release; a first build takes a few minutes)"
if ! wait "$build"; then
  cat "$build_log"
  exit 1
fi
rm -f "$build_log"
binary="$CARGO_TARGET_DIR/release/wallet"

export WALLET_HTTP_ADDR="${WALLET_HTTP_ADDR:-127.0.0.1:8080}"
# Development keys for this local run (a production deployment sets its own).
export WALLET_API_KEYS="${WALLET_API_KEYS:-checkout:dev-checkout-key,funding:dev-funding-key,admin:dev-admin-key}"
base="http://$WALLET_HTTP_ADDR"
pidfile="$WALLET_DATA_DIR/wallet.pid"

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "stopping the running service (pid $(cat "$pidfile"))"
  kill -TERM "$(cat "$pidfile")"
  for _ in $(seq 1 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
fi

# Descriptors for the connection cap (WALLET_HTTP_MAX_CONNECTIONS) on top of the pools:
# raise the soft open-files limit to the hard one where the shell allows it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open-files limit $(ulimit -n)"

if [ "${1:-}" = "--foreground" ]; then
  start_broker_in_background
  log "starting the service on $base (ctrl-c stops it)"
  exec "$binary"
fi

log "starting the service on $base"
nohup "$binary" >"$WALLET_DATA_DIR/wallet.log" 2>&1 </dev/null &
echo $! >"$pidfile"
if ! wait_for 60 "the wallet service" curl -fsS "$base/readyz"; then
  tail -n 20 "$WALLET_DATA_DIR/wallet.log"
  exit 1
fi
# Only now, so that its build does not slow the service's.
start_broker_in_background
if broker_alive; then
  broker="The broker is up on $WALLET_KAFKA_BROKERS: events are published and points credited."
else
  broker="The broker is being set up in the background (log: $broker_log; its first build
takes about 11 minutes). Payments work meanwhile; their events wait in the outbox
(\"outbox\" in /readyz) and are published, and points credited, once it is up."
fi

cat <<EOT

The wallet service is up on $base (pid $(cat "$pidfile"), logs: $WALLET_DATA_DIR/wallet.log).
Readiness: $(curl -fsS "$base/readyz")
$broker

Development API keys: checkout scope 'dev-checkout-key', funding scope (top-ups)
'dev-funding-key', admin scope 'dev-admin-key' (set WALLET_API_KEYS to use others).

Try it:
  export KEY='Authorization: Bearer dev-checkout-key' FUNDING='Authorization: Bearer dev-funding-key'
  curl -s -X POST $base/api/v1/wallets -H "\$KEY" -H 'content-type: application/json' -d '{"userId":"alice"}'
  curl -s -X POST $base/api/v1/wallets/alice/top-ups -H "\$FUNDING" -H 'content-type: application/json' -d '{"topUpId":"topup-1","amount":"150000"}'
  curl -s -X POST $base/api/v1/payments -H "\$KEY" -H 'content-type: application/json' -d '{"orderId":"order-1","userId":"alice","amount":"1000"}'
  curl -s $base/api/v1/wallets/alice -H "\$KEY"
  curl -s $base/openapi.json    # the API, documented
  curl -s $base/metrics         # Prometheus metrics

Stop it with: kill \$(cat $pidfile)
EOT
