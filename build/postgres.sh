#!/usr/bin/env bash
# Installs (Debian's postgresql, once) and starts a local PostgreSQL 15 for the journal of a cluster and for the
# tests, and makes sure a role and database exist. Prints the connection string on stdout; everything else goes
# to stderr. Idempotent: a running server and an existing role are left as they are.
#   MOCE_PG_DB (default moce), MOCE_PG_USER (default moce), MOCE_PG_PASSWORD (default moce), MOCE_PG_PORT (default 5432)
set -euo pipefail
db=${MOCE_PG_DB:-moce}; user=${MOCE_PG_USER:-moce}; password=${MOCE_PG_PASSWORD:-moce}; port=${MOCE_PG_PORT:-5432}
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

bash "$(dirname "$0")/apt-install.sh" postgresql >&2
version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $2}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -n 1); cluster=main
  $sudo pg_createcluster "$version" "$cluster" >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
  echo "postgres.sh: starting PostgreSQL $version/$cluster" >&2
  $sudo pg_ctlcluster "$version" "$cluster" start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')
psql_as_postgres() {   # psql as the postgres superuser, each argument passed as it is
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql -p "$port" -qtAX "$@"; else sudo -u postgres psql -p "$port" -qtAX "$@"; fi
}
for i in $(seq 1 30); do psql_as_postgres -c 'select 1' >/dev/null 2>&1 && break; sleep 1; done
if [ "$(psql_as_postgres -c "select 1 from pg_roles where rolname='$user'")" != "1" ]; then
  psql_as_postgres -c "create role $user login password '$password'" >&2
fi
if [ "$(psql_as_postgres -c "select 1 from pg_database where datname='$db'")" != "1" ]; then
  psql_as_postgres -c "create database $db owner $user" >&2
fi
echo "Host=127.0.0.1;Port=$port;Database=$db;Username=$user;Password=$password"
