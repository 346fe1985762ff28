#!/bin/sh
# First start: initdb with the password from POSTGRES_PASSWORD_FILE and the database
# POSTGRES_DB; then (and on every later start) the server, listening on the network with
# password authentication (scram-sha-256) and trusting only its own socket.
set -eu
bin=/usr/lib/postgresql/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE must name the password file (a secret)}"
    "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
    echo "postgres-entrypoint: initialised $PGDATA with database $POSTGRES_DB"
fi
exec "$bin/postgres" -D "$PGDATA" -c unix_socket_directories=/tmp "$@"
