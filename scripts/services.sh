#!/usr/bin/env bash
# Makes sure the local services that Sluice's demo and tests use are installed and
# running, on Debian/Ubuntu. Idempotent: does nothing for a service that answers
# already.
#
#   RabbitMQ   127.0.0.1:5672 guest/guest, streams on 127.0.0.1:5552
#   PostgreSQL 127.0.0.1:5432, user postgres without password (trust), database test
#   Redis      127.0.0.1:6379, no password (redis-writer's tests)
#   ClickHouse 127.0.0.1:8123 (HTTP), user default without password (clickhouse-writer's tests)
set -euo pipefail
log() { echo "[services] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  log "nothing listens on 127.0.0.1:$1 after 60 s"; return 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  log "apt-get install $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL ---------------------------------------------------------------
if ! port_open 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  cluster_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  [ -n "$cluster_version" ] || { log "no PostgreSQL cluster found under /etc/postgresql"; exit 1; }
  log "starting PostgreSQL $cluster_version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$cluster_version" main start || true
  wait_port 5432
fi
# The tests and the demo connect as postgres over TCP without a password.
if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
  hba=$(as_root find /etc/postgresql -name pg_hba.conf | head -1)
  log "allowing local trust authentication in $hba"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main reload
  sleep 1
fi
if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc "select 1 from pg_database where datname='test'" | grep -q 1; then
  psql "postgres://postgres@127.0.0.1:5432/postgres" -qc 'create database test'
fi
# The demo's writer role (config.toml): it may create its table in the public
# schema of `postgres`, and nothing more (docs/operations.md, "Least privilege
# in Postgres").
psql "postgres://postgres@127.0.0.1:5432/postgres" -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sluice_writer') THEN
    CREATE ROLE sluice_writer LOGIN;
  END IF;
END $$;
GRANT USAGE, CREATE ON SCHEMA public TO sluice_writer;
SQL

# --- RabbitMQ -----------------------------------------------------------------
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  wait_port 5672
fi
# Stream pipelines read RabbitMQ streams with the stream protocol (port 5552):
# its plugin ships with the broker and is off until enabled (online, no restart).
if ! port_open 5552; then
  log "enabling RabbitMQ's stream plugin"
  as_root rabbitmq-plugins enable rabbitmq_stream >/dev/null
  wait_port 5552
fi

# --- Redis --------------------------------------------------------------------
if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  # Not the packaged service (it may not be startable in a container): a server
  # that keeps nothing on disk, on loopback only.
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
  wait_port 6379
fi

# --- ClickHouse ---------------------------------------------------------------
# Debian's clickhouse-server (18.16 on Debian 12), its default configuration:
# HTTP on 127.0.0.1:8123, native protocol on 9000, user `default` without password.
clickhouse_answers() {
  ( exec 3<>/dev/tcp/127.0.0.1/8123 &&
    printf 'POST / HTTP/1.0\r\nContent-Length: 8\r\n\r\nSELECT 1' >&3 &&
    timeout 5 cat <&3 ) 2>/dev/null | tr -d '\r' | tail -n 1 | grep -qx 1
}
if ! clickhouse_answers; then
  [ -x /etc/init.d/clickhouse-server ] || apt_install clickhouse-server clickhouse-client
  if ! port_open 8123; then
    # The package's postinst makes the data folder only when it creates the
    # clickhouse user, so a machine where the package was purged and installed
    # again has the user but no folder, and the server exits at once.
    for d in /var/lib/clickhouse /var/log/clickhouse-server; do
      [ -d "$d" ] || { as_root mkdir -p "$d" && as_root chown clickhouse:clickhouse "$d"; }
    done
    log "starting ClickHouse"
    # The init script runs the server as the clickhouse user, with or without systemd.
    as_root /etc/init.d/clickhouse-server start >/dev/null || true
  fi
  for _ in $(seq 1 120); do clickhouse_answers && break; sleep 0.5; done
  if ! clickhouse_answers; then
    log "ClickHouse does not answer SELECT 1 on 127.0.0.1:8123 after 60 s; its error log says:"
    as_root tail -n 20 /var/log/clickhouse-server/clickhouse-server.err.log >&2 || true
    exit 1
  fi
fi

# --- minisign -----------------------------------------------------------------
# Not a service: the signing tests check that the minisign tool verifies what
# `sluice plugin sign` writes, and signs what the daemon accepts.
command -v minisign >/dev/null || apt_install minisign

# --- Python and pytest --------------------------------------------------------
# Not a service: Python plugins are built with componentize-py, which `sluice
# plugin build` installs into its cache on first use (python3 with its venv
# module is all it needs), and their tests run with `python3 -m pytest`
# (tests/integration/python_plugins.rs runs a generated plugin's tests).
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv python3-pip
if ! python3 -c 'import pytest' 2>/dev/null; then
  log "pip install --user pytest"
  python3 -m pip install --user --quiet pytest 2>/dev/null \
    || python3 -m pip install --user --quiet --break-system-packages pytest
fi
# --- promtool and tmux --------------------------------------------------------
# Not services either: the observability tests check the shipped alert rules
# with promtool (Debian's `prometheus` package; its own server is not needed),
# and drive `sluice top` in a real terminal with tmux.
command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
command -v tmux >/dev/null || apt_install tmux
log "PostgreSQL, RabbitMQ, Redis and ClickHouse are up"
