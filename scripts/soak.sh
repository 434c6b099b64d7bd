#!/usr/bin/env bash
# The soak (issue 12): the release daemon for a given time against the local
# RabbitMQ and Postgres, with every poison kind and the daemon tests' faults, then
# a count of every message (see BENCHMARKS.md, "Soak").
#
#   scripts/soak.sh 10m                          # the full soak
#   scripts/soak.sh 90s --poison json,sleep      # a short run with some poisons
#
# The first argument is the duration; the rest go to the soak unchanged (`--help`
# lists them). Exits 1 when a message was lost or duplicated.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10m}"
shift || true
cargo build --release --locked -p sluice
exec cargo bench --locked -p sluice-tests --bench soak -- --duration "$duration" "$@"
