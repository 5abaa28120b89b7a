#!/usr/bin/env bash
# The benchmarks (docs/benchmarks.md): builds the hub and the load clients in release mode,
# makes sure PostgreSQL is up, and measures both backends: single requests (clientele-bench),
# then bulk sync (sync-bench). Results go to stdout, progress to stderr. Extra arguments go to
# clientele-bench (e.g. scripts/bench.sh --backend sqlite --duration-secs 5); set SYNC_BENCH_ARGS
# for sync-bench (e.g. SYNC_BENCH_ARGS="--large 0"). See `--help` of each.
set -euo pipefail
cd "$(dirname "$0")/.."

export CLIENTELE_TEST_POSTGRES_URL="${CLIENTELE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

cargo build --release -p clientele -p clientele-bench
# Only when PostgreSQL is down: postgres-up.sh also drops clientele_test_* databases, which
# would break test runs of other people on this machine.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  scripts/postgres-up.sh >&2
fi

echo "clientele-bench on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ): $(nproc) cores," \
  "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)," \
  "$(free -g | awk '/^Mem:/ {print $2 " GiB memory"}'), load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
# An absolute path: each hub process starts in a directory of its own.
hub="$PWD/target/release/clientele"
target/release/clientele-bench --hub-binary "$hub" "$@"
# shellcheck disable=SC2086 # word splitting of the extra arguments is intended
target/release/sync-bench --hub-binary "$hub" ${SYNC_BENCH_ARGS:-}
# shellcheck disable=SC2086
target/release/agent-bench --binary "$hub" ${AGENT_BENCH_ARGS:-}
