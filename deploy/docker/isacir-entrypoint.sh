#!/bin/sh
# Runs `isacir ARGS`. Secrets arrive as files, never in the image or the environment file:
# PGPASSWORD_FILE names the database password, which libpq (psycopg) reads from PGPASSWORD.
set -eu
if [ -n "${PGPASSWORD_FILE:-}" ]; then
    PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
    export PGPASSWORD
fi
exec isacir "$@"
