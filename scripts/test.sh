#!/usr/bin/env bash
# The whole test suite: the lint gates (rustfmt, clippy with warnings as errors:
# quick, so they run first), then unit tests of every crate, and the integration
# tests against the local RabbitMQ, PostgreSQL, Redis and ClickHouse with the
# real built plugins (built by `sluice plugin build`, which fetches a wasm
# toolchain itself the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The daemon also builds without the plugin tooling (feature `plugin-tools`):
# the lean binary for hosts that only run plugins.
cargo clippy -p sluice --no-default-features --all-targets --locked -- -D warnings
scripts/services.sh
# The Python SDK's and the Python example plugin's own tests (no wasm: seconds).
python3 -m pytest -q -p no:cacheprovider plugin-sdk/python plugins/python-csv-source
exec cargo test --workspace --locked "$@"
