#!/usr/bin/env bash
# Makes sure the local PostgreSQL answers on 127.0.0.1:5432 (starting the Debian cluster if it is
# down) and drops test databases that earlier runs left behind (those still in use by a running
# test are left alone).
set -euo pipefail

url="${CLIENTELE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break
    sleep 1
  done
fi
pg_isready -h 127.0.0.1 -p 5432

stale=$(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'clientele_test_%'")
for db in $stale; do
  psql "$url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
done
