#!/usr/bin/env bash
# Checks what operators run: the Prometheus configuration and alert rules
# (`promtool check`), the rules' behaviour on made-up series (`promtool test rules`), the
# Grafana dashboard's JSON, and that every wallet_* metric the rules and the dashboard
# query is one the service records. Installs promtool (Debian's prometheus package)
# when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing promtool (Debian's prometheus package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"], "no panels"' \
  deploy/grafana/dashboards/wallet.json
missing=0
for name in $(grep -oh 'wallet_[a-z_]*' deploy/prometheus/alerts.yml deploy/grafana/dashboards/wallet.json | sed -E 's/_(bucket|count|sum)$//' | sort -u); do
  if ! grep -q "\"$name\"" src/telemetry/metrics.rs; then
    echo "alerts or dashboard query $name, which the service does not record" >&2
    missing=1
  fi
done
exit "$missing"
