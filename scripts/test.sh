#!/usr/bin/env bash
# Runs vprov's whole test suite: unit tests beside the code and the end-to-end tests
# in tests/ against the real `vprov` binary. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The end-to-end tests run the `vprov` binary, so build every target first.
cargo build --workspace --all-targets --locked
# --no-fail-fast: every test binary runs and every failing one is reported (the exit
# status is still non-zero when any test failed).
cargo test --workspace --locked --no-fail-fast
