#!/usr/bin/env bash
# Makes sure the local RabbitMQ and PostgreSQL that Sluice's demo and tests use are
# installed and running, on Debian/Ubuntu. Idempotent: does nothing when both
# answer already.
#
#   RabbitMQ   127.0.0.1:5672 guest/guest
#   PostgreSQL 127.0.0.1:5432, user postgres without password (trust), database test
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

# --- RabbitMQ -----------------------------------------------------------------
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  wait_port 5672
fi
log "PostgreSQL and RabbitMQ are up"
