#!/usr/bin/env bash
# Start the services the integration tests use, on 127.0.0.1 only: PostgreSQL 5432 (role `fstore`,
# password `fstore`, database `test`) and Redis 6379 (no persistence). Installs them from Debian's
# packages when absent. Idempotent: what already runs is left as it is.
#
# `make test` calls this. Without root (or apt-get) it says what is missing and the tests that need
# a service skip; with FSTORE_REQUIRE_SERVICES=1 (CI) a service that cannot be had is an error.
set -uo pipefail

require=${FSTORE_REQUIRE_SERVICES:-0}
fail() {
  echo "services: $*" >&2
  if [ "$require" = 1 ]; then exit 1; fi
  echo "services: the tests that need it will skip" >&2
  exit 0
}
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v pg_ctlcluster >/dev/null 2>&1 && ls -d /etc/postgresql/*/main >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "missing ${missing[*]} (install them, or run as root with apt-get)"
  fi
  echo "services: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]} failed"
fi

# Redis: loopback only, nothing written to disk.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/fstore-redis-6379.log || fail "redis-server did not start"
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || fail "Redis does not answer on 127.0.0.1:6379"

# PostgreSQL: the installed cluster, listening on loopback.
version=$(ls /etc/postgresql | sort -V | tail -n 1)
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 || fail "PostgreSQL $version did not start"
  for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || fail "PostgreSQL does not answer on 127.0.0.1:5432"

# The role and database the tests use (a password, so the default scram-sha-256 rule on 127.0.0.1 lets
# it in; the tests create and drop a database of their own per session, hence CREATEDB).
as_postgres "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL' || fail "could not create the role fstore and database test"
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'fstore') THEN
    ALTER ROLE fstore WITH LOGIN CREATEDB PASSWORD 'fstore';
  ELSE
    CREATE ROLE fstore WITH LOGIN CREATEDB PASSWORD 'fstore';
  END IF;
END $$;
SELECT 'CREATE DATABASE test OWNER fstore' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'test') \gexec
SQL
PGPASSWORD=fstore psql -q -h 127.0.0.1 -U fstore -d test -c 'SELECT 1' >/dev/null \
  || fail "the role fstore cannot log in to database test on 127.0.0.1"
echo "services: PostgreSQL $version on 127.0.0.1:5432 (fstore@test), Redis on 127.0.0.1:6379"
