#!/usr/bin/env bash
# Installs (when missing) and starts (when not running) what the wallet service needs,
# all on 127.0.0.1: MariaDB on 3306, Redis on 6379 and a Kafka-protocol broker (Tansu)
# on 9092, its storage in a PostgreSQL cluster of its own on 5433. Safe to run any
# number of times: servers that already answer are reused.
#
# Sourced by scripts/run.sh, scripts/test.sh and the load scripts; can also be run on
# its own. WALLET_DEPS_BROKER=later leaves the broker out (scripts/run.sh sets it up
# in the background once the service is up: see start_broker_in_background);
# WALLET_DEPS_BROKER=only sets up the broker alone.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
deps_script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deps.sh"

WALLET_DATA_DIR="${WALLET_DATA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.data}"
# Created whether or not a server is started here: the service writes its pid and log
# into it even when every dependency was already running.
mkdir -p "$WALLET_DATA_DIR"
DB_PORT="${WALLET_DB_PORT:-3306}"
REDIS_PORT="${WALLET_REDIS_PORT:-6379}"
KAFKA_PORT="${WALLET_KAFKA_PORT:-9092}"
DB_USER="${WALLET_DB_USER:-wallet}"
DB_PASSWORD="${WALLET_DB_PASSWORD:-wallet}"
DB_NAME="${WALLET_DB_NAME:-wallet}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  # policy-rc.d style environments refuse to start services from postinst; we start them below.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

mariadb_alive() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" --connect-timeout=2 ping >/dev/null 2>&1; }
wallet_user_works() {
  sql -e 'SELECT 1' >/dev/null 2>&1
}

ensure_mariadb() {
  if ! command -v mariadbd >/dev/null 2>&1; then apt_install mariadb-server mariadb-client; fi
  if ! mariadb_alive; then
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    $SUDO mkdir -p /run/mysqld
    $SUDO chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
      $SUDO mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    mkdir -p "$WALLET_DATA_DIR"
    # Durable settings (flush at every commit): this is a ledger, benchmarks measure it that way.
    $SUDO setsid nohup mariadbd --user=mysql --datadir=/var/lib/mysql \
      --bind-address=127.0.0.1 --port="$DB_PORT" --socket=/run/mysqld/mysqld.sock \
      --max-connections=1000 --innodb-buffer-pool-size=512M \
      >"$WALLET_DATA_DIR/mariadb.log" 2>&1 < /dev/null &
    wait_for 60 "MariaDB" mariadb_alive
  fi
  if ! wallet_user_works; then
    log "creating database user '$DB_USER'"
    # Tests create one database each, so the user may create and drop databases.
    $SUDO mariadb -uroot <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
  fi
  # A server someone else started may use the stock limit of 151; parallel tests need more.
  $SUDO mariadb -uroot -e "SET GLOBAL max_connections = GREATEST(@@max_connections, 1000)" 2>/dev/null || true
  sql -e "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`"
}

redis_alive() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server redis-tools; fi
  if ! redis_alive; then
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    mkdir -p "$WALLET_DATA_DIR/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
      --dir "$WALLET_DATA_DIR/redis" --logfile "$WALLET_DATA_DIR/redis.log"
    wait_for 20 "Redis" redis_alive
  fi
}

# A Redis Cluster of the load runs' own (loadtest/run.sh --redis-cluster): three
# primaries with a replica each, on 127.0.0.1:$REDIS_CLUSTER_PORT and the five ports
# after it, without persistence. Made again from scratch when it is not healthy.
REDIS_CLUSTER_PORT="${WALLET_REDIS_CLUSTER_PORT:-7101}"
redis_cluster_ports() { seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)); }
redis_cluster_urls() { seq -f "redis://127.0.0.1:%g" "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 2)) | paste -sd, -; }
redis_node_alive() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
redis_cluster_ok() {
  local port
  for port in $(redis_cluster_ports); do
    redis-cli -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok || return 1
  done
}
ensure_redis_cluster() {
  ensure_redis
  redis_cluster_ok && return 0
  log "starting a Redis Cluster on 127.0.0.1:$REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + 5))"
  local port dir nodes=()
  for port in $(redis_cluster_ports); do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  for port in $(redis_cluster_ports); do
    dir="$WALLET_DATA_DIR/redis-cluster/$port"
    rm -rf "$dir" && mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 --save "" --appendonly no --daemonize yes \
      --dir "$dir" --logfile "$dir/redis.log"
    nodes+=("127.0.0.1:$port")
  done
  for port in $(redis_cluster_ports); do
    wait_for 20 "Redis Cluster node $port" redis_node_alive "$port"
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  wait_for 30 "the Redis Cluster" redis_cluster_ok
}
# Empties the load runs' cluster (its keys are spread over slots that one UNLINK cannot span).
forget_redis_cluster() {
  local port
  for port in $(redis_cluster_ports); do redis-cli -p "$port" flushall >/dev/null 2>&1 || true; done
}

if ! command -v curl >/dev/null 2>&1; then apt_install curl; fi

# The Kafka-protocol broker: Tansu with its PostgreSQL storage engine, over a PostgreSQL
# cluster of its own on 127.0.0.1:$TANSU_PG_PORT (data in $WALLET_DATA_DIR/tansu-pg).
# Its SQLite storage does not hold the load: under a few hundred events/s it panics and
# answers Storage(UnableToSend) until restarted (docs/design.md, "The development broker"). Tansu 0.6.0 does
# not ship the PostgreSQL schema it expects: scripts/tansu-pg-schema.sql, written by
# scripts/tansu-pg-schema.py from the crate's SQLite schema. The tests that kill a
# broker start their own Tansu on a database of their own, copied from the
# `tansu_template` database made here.
TANSU_PG_PORT="${WALLET_TANSU_PG_PORT:-5433}"
TANSU_ROOT="${WALLET_TANSU_ROOT:-$HOME/.cache/wallet/tansu-pg}"
export WALLET_TANSU="$TANSU_ROOT/bin/tansu"
export WALLET_TANSU_STORAGE="postgres://postgres:postgres@127.0.0.1:$TANSU_PG_PORT"
tansu_pg="$WALLET_DATA_DIR/tansu-pg"

broker_alive() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$*"; else sudo -u postgres bash -c "$*"; fi; }
tansu_psql() { PGPASSWORD=postgres PGOPTIONS='-c client_min_messages=warning -c statement_timeout=0' psql -h 127.0.0.1 -p "$TANSU_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
tansu_pg_alive() { tansu_psql -d postgres -Atc 'select 1' >/dev/null 2>&1; }
# The settings Tansu's connections need, set on every start (ALTER SYSTEM, then a reload), so
# a cluster already running gets them too:
# - synchronous_commit=off: an acknowledged record is in memory and the WAL buffers until
#   the next flush, as Apache Kafka acknowledges acks=all from the page cache.
# - plan_cache_mode=force_generic_plan: Tansu fetches each record's headers with a query
#   of its own. With the statistics some runs leave, PostgreSQL planned that query anew
#   on every execution (0.11 ms of planning for 0.01 ms of work, pg_stat_statements), and
#   a consumer drained a backlog at as little as 2,100 events/s instead of 10,000-12,000.
# - enable_seqscan=off: every Tansu query is a lookup by key; a plan made when the tables
#   were near-empty (runs delete their topics) scanned the whole header table for each
#   fetched record.
# - enable_mergejoin=off, enable_hashjoin=off: for the same reason. With the statistics a
#   load run leaves, the generic plan of Tansu's record fetch merge-joined the partition
#   with every record of every topic past the fetch offset: 3-17 ms for an empty fetch
#   instead of 0.2 ms, which kept the broker's PostgreSQL at 1.7 cores with two idle
#   instances after a run that restarted the broker (new connections, new plans).
# - statement_timeout=30s: Tansu runs its retention sweep at start and every ten minutes,
#   one more each time, without waiting for the last. Under these plans its DELETE of
#   expired records runs for many minutes on a table a load run filled: after seven broker
#   restarts, seven of them held both cores and the consumers timed out. Tansu's other
#   queries take milliseconds; a sweep cut short is tried again at the next one. This
#   script's own statements lift the limit.
tansu_pg_settings() {
  tansu_psql -d postgres -c "ALTER SYSTEM SET synchronous_commit = off" \
    -c "ALTER SYSTEM SET plan_cache_mode = force_generic_plan" \
    -c "ALTER SYSTEM SET enable_seqscan = off" \
    -c "ALTER SYSTEM SET enable_mergejoin = off" -c "ALTER SYSTEM SET enable_hashjoin = off" \
    -c "ALTER SYSTEM SET statement_timeout = '30s'" \
    -c "SELECT pg_reload_conf()" >/dev/null
}
tansu_database() { # tansu_database NAME SCHEMA_FILE: created when missing; the schema is idempotent
  if [ -z "$(tansu_psql -d postgres -Atc "select 1 from pg_database where datname = '$1'")" ]; then
    tansu_psql -d postgres -c "create database $1"
  fi
  tansu_psql -d "$1" -f "$2" >/dev/null
}

# Deletes the broker's topics whose names match the regular expression $1, with their
# records: every fetch makes Tansu scan the whole topic table, so the topics of finished
# test and load runs make the broker slower and slower. (`tansu topic delete` of one
# topic deleted every topic.) Never fails: the broker may be someone else's.
tansu_forget_topics() {
  tansu_psql -d tansu -c "DELETE FROM topic WHERE name ~ '$1'" >/dev/null 2>&1 || true
}

# Scopes the instances this shell starts to a load run named $1: their Redis keys
# (`$1:*`), topics (`$1.*`) and consumer groups (`$1-*`), which forget_run deletes.
run_scope() {
  export WALLET_REDIS_KEY_PREFIX="$1"
  export WALLET_EVENTS_TOPIC="$1.payment-events" WALLET_REQUESTS_TOPIC="$1.payment-requests"
  export WALLET_POINTS_GROUP="$1-points" WALLET_REQUESTS_GROUP="$1-requests" WALLET_DLT_GROUP="$1-dlt"
}

# Deletes what a load run named $1 left behind: its Redis keys (`$1:*`; a benchmark
# leaves millions of cached replies with a 24 h TTL otherwise) and its topics (`$1.*`).
forget_run() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern "$1:*" 2>/dev/null |
    xargs -r -n 5000 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" unlink >/dev/null 2>&1 || true
  tansu_forget_topics "^$1\\."
}

# Sets the broker up, one set-up at a time: a test run waits for the one run.sh started
# in the background. The set-up runs in a process of its own that holds the lock; the
# servers it starts do not inherit it (`flock -o`).
ensure_broker() {
  mkdir -p "$TANSU_ROOT"
  local lock="$TANSU_ROOT/.setup.lock"
  if ! flock -n -o "$lock" true; then
    log "waiting for the broker's set-up under way (log: $broker_log)"
  fi
  flock -o "$lock" env WALLET_DEPS_BROKER=set-up bash "$deps_script"
}


set_up_broker() {
  if [ ! -x "$WALLET_TANSU" ]; then
    log "installing the Tansu broker with PostgreSQL storage into $TANSU_ROOT (about 11 minutes on 2 cores, once)"
    (unset CARGO_TARGET_DIR; export PATH="$HOME/.cargo/bin:$PATH"; cargo install tansu --version 0.6.0 --locked --features postgres,libsql \
      --root "$TANSU_ROOT" --quiet)
  fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then apt_install postgresql; fi
  local pg_bin
  pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  if ! tansu_pg_alive; then
    mkdir -p "$tansu_pg/run"
    $SUDO chown -R postgres:postgres "$tansu_pg"
    if [ ! -f "$tansu_pg/pgdata/PG_VERSION" ]; then
      log "creating the broker's PostgreSQL cluster in $tansu_pg/pgdata"
      as_postgres "echo postgres >'$tansu_pg/run/pw' && '$pg_bin/initdb' -D '$tansu_pg/pgdata' -U postgres \
        --auth=scram-sha-256 --pwfile='$tansu_pg/run/pw' -E UTF8 >'$tansu_pg/run/initdb.log' && rm '$tansu_pg/run/pw'"
    fi
    log "starting the broker's PostgreSQL on 127.0.0.1:$TANSU_PG_PORT"
    as_postgres "'$pg_bin/pg_ctl' -D '$tansu_pg/pgdata' -l '$tansu_pg/run/postgres.log' \
      -o '-p $TANSU_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tansu_pg/run -c max_connections=300' \
      start >/dev/null"
    wait_for 30 "the broker's PostgreSQL" tansu_pg_alive
  fi
  tansu_pg_settings
  local schema
  schema="$(dirname "$deps_script")/tansu-pg-schema.sql"
  tansu_database tansu "$schema"
  tansu_database tansu_template "$schema"
  if broker_alive; then return; fi
  log "starting the Kafka-protocol broker (Tansu, PostgreSQL storage) on 127.0.0.1:$KAFKA_PORT"
  RUST_LOG="${RUST_LOG:-warn}" setsid nohup "$WALLET_TANSU" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "$WALLET_TANSU_STORAGE/tansu" >>"$WALLET_DATA_DIR/kafka.log" 2>&1 </dev/null &
  wait_for 30 "the Kafka broker" broker_alive
}

# Where start_broker_in_background writes what it does.
broker_log="$WALLET_DATA_DIR/broker-setup.log"

# Sets the broker up (build, PostgreSQL, start) in a process of its own, which outlives
# this shell: the service takes payments meanwhile, and its relay publishes the waiting
# events once the broker answers. Does nothing when the broker already answers.
start_broker_in_background() {
  if broker_alive; then return; fi
  log "setting up the Kafka-protocol broker in the background (log: $broker_log)"
  WALLET_DEPS_BROKER=only setsid nohup bash "$deps_script" >>"$broker_log" 2>&1 </dev/null &
}

export WALLET_DATABASE_URL="${WALLET_DATABASE_URL:-mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$DB_PORT/$DB_NAME}"
export WALLET_REDIS_URL="${WALLET_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
export WALLET_KAFKA_BROKERS="${WALLET_KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"
case "${WALLET_DEPS_BROKER:-now}" in
  set-up) set_up_broker ;;
  only)
    ensure_broker
    log "the broker is up ($WALLET_KAFKA_BROKERS)"
    ;;
  later)
    ensure_mariadb
    ensure_redis
    log "MariaDB and Redis are up ($WALLET_DATABASE_URL, $WALLET_REDIS_URL)"
    ;;
  *)
    ensure_mariadb
    ensure_redis
    ensure_broker
    log "MariaDB, Redis and the broker are up ($WALLET_DATABASE_URL, $WALLET_REDIS_URL, $WALLET_KAFKA_BROKERS)"
    ;;
esac
