#!/usr/bin/env bash
# Runs `vprov serve` on its embedded defaults (SQLite store and master key in ./data)
# on a fresh Debian machine that has the Rust toolchain: installs what the build needs
# first (scripts/install-deps.sh --build), then builds and runs the release binary.
# Options are passed to `vprov serve` (see `vprov serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --build
exec cargo run --release --locked -q -p vprov-core -- serve "$@"
