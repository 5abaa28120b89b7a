#!/usr/bin/env bash
# The whole test suite: unit tests, and the end-to-end suite against both SQLite and PostgreSQL.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p clientele --test customers).
set -euo pipefail
cd "$(dirname "$0")/.."

export CLIENTELE_TEST_POSTGRES_URL="${CLIENTELE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/postgres-up.sh
cargo test --workspace "$@"
