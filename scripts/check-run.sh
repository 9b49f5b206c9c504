#!/usr/bin/env bash
# Checks the README's run command as a user with every dependency already running would
# meet it (a second checkout, or servers of their own): `./scripts/run.sh` in a data
# folder it has never seen, on a free port, must start the service, answer a payment
# and stop again. Run by scripts/test.sh after the dependencies are up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

data_dir=$(mktemp -d)
port=$(free_port)
base="http://127.0.0.1:$port"
stop() {
  if [ -f "$data_dir/wallet.pid" ]; then kill -TERM "$(cat "$data_dir/wallet.pid")" 2>/dev/null || true; fi
  rm -rf "$data_dir"
}
trap stop EXIT

# A folder that does not exist yet, as on a first run whose servers were started elsewhere.
rmdir "$data_dir"
WALLET_DATA_DIR="$data_dir" WALLET_HTTP_ADDR="127.0.0.1:$port" ./scripts/run.sh >/dev/null

call() { curl -fsS -H 'content-type: application/json' -H "Authorization: Bearer $1" "${@:2}"; }
user="run-check-$(date +%s%N)"
call dev-checkout-key -X POST "$base/api/v1/wallets" -d "{\"userId\":\"$user\"}" >/dev/null
call dev-funding-key -X POST "$base/api/v1/wallets/$user/top-ups" -d "{\"topUpId\":\"$user-t\",\"amount\":\"5000\"}" >/dev/null
paid=$(call dev-checkout-key -X POST "$base/api/v1/payments" -d "{\"orderId\":\"$user-o\",\"userId\":\"$user\",\"amount\":\"1000\"}")
case "$paid" in
  *'"balanceAfter":"4000"'*) echo "[wallet] the run command works with every dependency already up" ;;
  *) echo "[wallet] unexpected payment answer: $paid"; exit 1 ;;
esac
