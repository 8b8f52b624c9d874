#!/usr/bin/env bash
# Runs vprov's whole test suite: unit tests beside the code and the end-to-end tests
# in tests/ against the real `vprov` binary. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The store's tests run against SQLite and PostgreSQL: a throwaway cluster for this
# run, stopped on exit; VPROV_TEST_REQUIRE_PG makes a missing cluster a failure.
pg_dir=$(mktemp -d -u "${TMPDIR:-/tmp}/vprov-pg.XXXXXX")
trap 'scripts/pg-cluster.sh stop "$pg_dir"' EXIT
VPROV_TEST_PG_URL=$(scripts/pg-cluster.sh start "$pg_dir")
export VPROV_TEST_PG_URL VPROV_TEST_REQUIRE_PG=1 VPROV_TEST_PG_CA="$pg_dir/ca.crt"
# The end-to-end tests run the `vprov` binary, so build every target first.
cargo build --workspace --all-targets --locked
# --no-fail-fast: every test binary runs and every failing one is reported (the exit
# status is still non-zero when any test failed).
cargo test --workspace --locked --no-fail-fast
