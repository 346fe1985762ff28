#!/bin/sh
# Make the stack's secrets once, under ./secrets (what exists is kept; delete a file to remake it):
#   db_password         the PostgreSQL password (isacir and postgres read it)
#   tls.crt, tls.key    a self-signed certificate for ISACIR_SERVER_NAME (replace with your own)
#   keys/keys.toml      API key hashes; `admin_key` and `metrics_key` hold the plaintext keys
#                       of an admin key and of Prometheus's metrics-only key
# Needs openssl and the isacir image (ISACIR_IMAGE). Run as root, from anywhere.
set -eu
cd "$(dirname "$0")"
set -a; . ./.env; set +a
docker=${DOCKER:-docker}
umask 027
mkdir -p secrets/keys
if [ ! -s secrets/db_password ]; then
    openssl rand -hex 24 > secrets/db_password
fi
if [ ! -s secrets/tls.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=${ISACIR_SERVER_NAME}" \
        -addext "subjectAltName=DNS:${ISACIR_SERVER_NAME},DNS:localhost,IP:127.0.0.1" \
        -keyout secrets/tls.key -out secrets/tls.crt 2>/dev/null
fi
add_key() {  # NAME SCOPES OUTFILE: a new key in keys.toml, its plaintext in OUTFILE
    "$docker" run --rm --user 0 --entrypoint isacir -v "$PWD/secrets/keys:/keys" "$ISACIR_IMAGE" \
        keys add --file /keys/keys.toml --name "$1" --scopes "$2" --json \
        | tail -n 1 | python3 -c "import json, sys; print(json.load(sys.stdin)['key'])" > "$3.tmp"
    mv "$3.tmp" "$3"
}
[ -s secrets/admin_key ] || add_key admin admin secrets/admin_key
[ -s secrets/metrics_key ] || add_key prometheus metrics secrets/metrics_key
# the containers read the secrets through the group ISACIR_SECRETS_GID; the key hashes are not secret
chgrp -R "$ISACIR_SECRETS_GID" secrets
chmod 0750 secrets secrets/keys
chmod 0640 secrets/db_password secrets/tls.key secrets/metrics_key secrets/tls.crt
chmod 0600 secrets/admin_key
chmod 0755 secrets/keys && chmod 0644 secrets/keys/keys.toml
rm -f secrets/keys/.keys.toml.lock
echo "secrets in $(pwd)/secrets; the admin key is in secrets/admin_key"
