#!/usr/bin/env bash
# Brings Sluice up on config.toml: starts RabbitMQ, PostgreSQL, Redis and
# ClickHouse (installing them where missing), builds the daemon and the shipped plugins into plugins-dist/,
# checks the configuration, then runs the daemon in the foreground (Ctrl-C drains
# in-flight batches and stops).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked -p sluice
sluice=target/release/sluice
"$sluice" plugin build plugins/json-source plugins/postgres-writer plugins/clickhouse-writer \
  plugins/redis-writer plugins/file-writer --out plugins-dist
"$sluice" check --config config.toml
exec "$sluice" run --config config.toml
