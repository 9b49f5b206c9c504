#!/usr/bin/env bash
# A Kafka-protocol broker that holds the load, for load runs and for trying the event
# path at speed: Tansu with its PostgreSQL storage engine, on 127.0.0.1:9192, over a
# PostgreSQL cluster of its own on 127.0.0.1:5433 (data in .data/tansu-pg). The default
# broker of scripts/deps.sh (Tansu on SQLite, 9092) stays as it is; point the service or
# a load run at this one with WALLET_KAFKA_BROKERS=127.0.0.1:9192 or
# `./loadtest/drain.sh --brokers 127.0.0.1:9192`.
#
# Installs what is missing (Debian's postgresql; Tansu built with its `postgres` feature
# into ~/.cache/wallet/tansu-pg, 20 minutes on 2 cores, once) and starts what is not
# running; safe to run any number of times. The PostgreSQL schema Tansu 0.6.0 expects is
# not shipped with it: scripts/tansu-pg-schema.py writes it from the SQLite schema in
# the crate's sources.
#
# Known: on PostgreSQL 15 (Debian 12's), a consumer with isolation.level=read_committed
# and auto.offset.reset=latest makes the broker run a query PostgreSQL 15 refuses
# ("subquery in FROM must have an alias"), and it drops the connection. The service's
# consumers read from `earliest`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh >/dev/null

PG_PORT="${WALLET_TANSU_PG_PORT:-5433}"
BROKER_PORT="${WALLET_TANSU_PG_BROKER_PORT:-9192}"
root="${WALLET_TANSU_PG_ROOT:-$HOME/.cache/wallet/tansu-pg}"
data="$WALLET_DATA_DIR/tansu-pg"
tansu="$root/bin/tansu"

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then apt_install postgresql; fi
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
if [ ! -x "$tansu" ]; then
  log "installing Tansu with PostgreSQL storage into $root (about 20 minutes on 2 cores, once)"
  (unset CARGO_TARGET_DIR; cargo install tansu --version 0.6.0 --locked --features postgres,libsql \
    --root "$root" --quiet)
fi

as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$*"; else sudo -u postgres bash -c "$*"; fi; }
pg_alive() { PGPASSWORD=postgres psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; }
if ! pg_alive; then
  mkdir -p "$data/run"
  chown -R postgres:postgres "$data" 2>/dev/null || $SUDO chown -R postgres:postgres "$data"
  if [ ! -f "$data/pgdata/PG_VERSION" ]; then
    log "creating the broker's PostgreSQL cluster in $data/pgdata"
    as_postgres "echo postgres >'$data/run/pw' && '$pg_bin/initdb' -D '$data/pgdata' -U postgres \
      --auth=scram-sha-256 --pwfile='$data/run/pw' -E UTF8 >'$data/run/initdb.log' && rm '$data/run/pw'"
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_postgres "'$pg_bin/pg_ctl' -D '$data/pgdata' -l '$data/run/postgres.log' \
    -o '-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data/run' start >/dev/null"
  wait_for 30 "PostgreSQL" pg_alive
fi
export PGPASSWORD=postgres
if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d tansu -Atc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc 'create database tansu'
fi
# Every statement is `if not exists`: applied on every start, so a database created by
# an earlier version of the schema gets what it lacks.
python3 scripts/tansu-pg-schema.py >"$data/schema.sql"
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d tansu -q -v ON_ERROR_STOP=1 -f "$data/schema.sql" >/dev/null 2>&1

broker_pg_alive() { (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; }
if ! broker_pg_alive; then
  log "starting Tansu (PostgreSQL storage) on 127.0.0.1:$BROKER_PORT"
  RUST_LOG="${RUST_LOG:-warn}" setsid nohup "$tansu" broker \
    --listener-url "tcp://127.0.0.1:$BROKER_PORT" --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    --storage-engine "postgres://postgres:postgres@127.0.0.1:$PG_PORT/tansu" \
    >"$data/broker.log" 2>&1 </dev/null &
  wait_for 30 "the PostgreSQL-backed broker" broker_pg_alive
fi
log "Kafka-protocol broker with PostgreSQL storage: 127.0.0.1:$BROKER_PORT"
