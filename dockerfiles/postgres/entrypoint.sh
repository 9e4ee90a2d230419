#!/bin/sh
# First start on an empty PGDATA: initdb with POSTGRES_USER/POSTGRES_PASSWORD, create POSTGRES_DB, then
# run CMD. Later starts run CMD directly. Password auth (scram-sha-256) on TCP; the socket is local only.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is empty: refusing to create a database anyone on this host can log into" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=trust \
         --encoding=UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  # Listen on no TCP address while the database is created: nobody can connect to a half-made server.
  pg_ctl -w -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" start >/dev/null
  if [ "$POSTGRES_DB" != "postgres" ]; then
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres \
         -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" >/dev/null
  fi
  pg_ctl -w -m fast stop >/dev/null
  echo "initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi
# `postgres -c port=... -c listen_addresses=...` (compose), or any other command as given.
if [ "${1:-}" = "postgres" ]; then
  shift
  exec postgres -c unix_socket_directories=/var/run/postgresql "$@"
fi
exec "$@"
