# Caddy from Debian's packages: the TLS reverse proxy in front of the API and the operator UI. Its
# Caddyfile and the certificate and key (secrets) are mounted; it listens unprivileged on 8443.
# Healthy means it answers over TLS (a 502 while isacir restarts included).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update && apt-get install -y --no-install-recommends caddy curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
ENV XDG_DATA_HOME=/var/lib/caddy XDG_CONFIG_HOME=/var/lib/caddy
USER caddy
EXPOSE 8443
HEALTHCHECK --interval=5s --timeout=5s --retries=20 \
    CMD ["curl", "-sk", "-o", "/dev/null", "https://127.0.0.1:8443/healthz"]
ENTRYPOINT ["/usr/bin/caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
