#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against the hub's own /openapi.json: every operation,
# checking that no input gets a 5xx and that every response matches the documented status codes,
# content types and schemas. Not part of CI (minutes, not seconds); see docs/testing.md.
#
#   scripts/fuzz-api.sh                      # SQLite in a temp dir
#   scripts/fuzz-api.sh --postgres           # a fresh PostgreSQL database (dropped afterwards)
#   FUZZ_EXAMPLES=300 scripts/fuzz-api.sh    # examples per operation (default 100)
#   FUZZ_PHASES=examples,coverage,fuzzing,stateful scripts/fuzz-api.sh
#
# Extra arguments after the options go to `schemathesis run` (e.g. --include-path-regex groups).
# Exit status: schemathesis's (0 when no check failed).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

backend=sqlite
if [[ "${1:-}" == "--postgres" ]]; then
    backend=postgres
    shift
fi
examples="${FUZZ_EXAMPLES:-100}"
phases="${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}"
workers="${FUZZ_WORKERS:-2}"
postgres_admin="${FUZZ_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

venv=target/fuzz-venv
if [[ ! -x "$venv/bin/schemathesis" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
cargo build --quiet -p clientele
binary=target/debug/clientele

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
secret="ck_fuzz_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
database="sqlite://$work/clientele.db"
pg_database=""
if [[ "$backend" == postgres ]]; then
    scripts/postgres-up.sh
    pg_database="clientele_fuzz_$$"
    psql "$postgres_admin" -qc "CREATE DATABASE $pg_database"
    database="${postgres_admin%/*}/$pg_database"
fi

server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n "$pg_database" ]]; then
        psql "$postgres_admin" -qc "DROP DATABASE IF EXISTS $pg_database WITH (FORCE)" || true
    fi
    if [[ "${status:-1}" == 0 ]]; then
        rm -rf "$work"
    else
        echo "server log: $work/server.log"
    fi
}
trap cleanup EXIT

CLIENTELE_BOOTSTRAP_KEY="$secret" CLIENTELE_MASTER_KEY_FILE="$work/clientele.key" \
    "$binary" serve --listen "127.0.0.1:$port" --database "$database" \
    >"$work/server.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
    curl -fs "$base/healthz" >/dev/null && break
    sleep 0.1
done

# Run from target/ so that schemathesis's own cache (.schemathesis/) stays out of the sources.
fuzz() {
    (
        cd target
        PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$repo/scripts" SCHEMATHESIS_HOOKS=fuzz_api_hooks fuzz-venv/bin/schemathesis run \
            "$base/openapi.json" \
            --header "Authorization: Bearer $secret" \
            --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
            --phases "$phases" \
            --max-examples "$examples" \
            --workers "$workers" \
            --report junit,ndjson --report-dir "fuzz-report-$backend" \
            "$@"
    )
}
# Schemathesis reuses ids it saw in responses: revoking keys would soon revoke the very key it
# authenticates with (a legitimate request), and every later request would be a 401. So key
# revocation runs last, on its own.
set +e
fuzz --exclude-operation-id revoke_api_key "$@"
status=$?
fuzz --include-operation-id revoke_api_key "$@" || status=$?
set -e
if grep -q 'panicked' "$work/server.log"; then
    echo "the server panicked; see $work/server.log" >&2
    status=1
fi
exit "$status"
