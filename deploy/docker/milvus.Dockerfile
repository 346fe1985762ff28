# A Milvus standalone server (2.3.5, with embedded etcd and local storage) from the PyPI `milvus`
# package, which needs no registry. Where one is reachable, Milvus's own image
# (milvusdb/milvus, with etcd and MinIO) is the production choice; the compose file takes either.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY ca/ /usr/local/share/ca-certificates/
RUN (python3 -c "import venv, ensurepip" 2>/dev/null && command -v update-ca-certificates >/dev/null) \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*); \
    update-ca-certificates >/dev/null && python3 -m venv /opt/milvus \
    && /opt/milvus/bin/pip install --quiet "milvus==2.3.5" \
    && rm -f /usr/local/share/ca-certificates/*.crt && update-ca-certificates --fresh >/dev/null \
    && useradd --system --uid 10003 --user-group --home-dir /var/lib/milvus --create-home milvus
USER milvus
EXPOSE 19530 9091
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=30 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=4)"]
STOPSIGNAL SIGINT
# After a restart, Milvus's coordinators wait for their previous sessions' etcd leases to run out
# (30 s by default) before serving; on one host there is no other node to fail over to, so 10 s.
ENTRYPOINT ["/opt/milvus/bin/milvus-server", "--data", "/var/lib/milvus", "--extra-config", "common.session.ttl=10"]
