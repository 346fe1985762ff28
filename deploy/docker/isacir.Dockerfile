# The isacir service image: `isacir serve`, the operator UI with its vendored ONNX Runtime Web, and
# every `isacir` verb (index, models, backup, weights ...). Build from the repository root after
# `make web` (the UI's WebAssembly files are copied into the package there):
#
#   DOCKER_BUILDKIT=1 docker build -f deploy/docker/isacir.Dockerfile -t isacir:latest .
#
# BASE: any Debian-like image with apt (default debian:bookworm-slim; `make stack-test` uses a base
# built locally with mmdebstrap, for machines with no registry).
# TORCH_INDEX: where torch and torchvision come from. The default is PyTorch's CPU-only index (the
# small image). For a GPU image, name a CUDA index (https://download.pytorch.org/whl/cu130) or
# PyPI (whose Linux torch is the CUDA build): the NVIDIA libraries come as Python packages, so no
# CUDA base image is needed, only the host's driver and `--gpus all` (NVIDIA Container Toolkit).
# Wheels placed in deploy/docker/wheels/ (torch, torchvision and what they need) win over the index:
# that is how a build runs with no internet, from wheels brought in by hand.
ARG BASE=debian:bookworm-slim

# One stage: a build stage would only hold the same virtual environment again (several GB of torch
# in the builder's layer cache), and nothing here needs a compiler.
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# extra certificate authorities of the build network (a TLS-inspecting proxy), if any
COPY deploy/docker/ca/ /usr/local/share/ca-certificates/
# pg_dump and pg_restore: `isacir backup` and `restore` of a PostgreSQL feedback log
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && update-ca-certificates >/dev/null && python3 -m venv /opt/isacir
# torch first and pinned, as the Makefile does: from the local wheels when there are any
RUN --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    if ls /wheels/torch-*.whl >/dev/null 2>&1; then from="--no-index --find-links /wheels"; \
    else from="--index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple"; fi; \
    /opt/isacir/bin/pip install --quiet $from torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY src/isacir /src/src/isacir
RUN test -f /src/src/isacir/serve/static/vendor/VERSION.json \
    || { echo "the operator UI's vendored files are missing: run 'make web' before building" >&2; exit 1; }; \
    /opt/isacir/bin/pip install --quiet "/src[serve,postgres]" && /opt/isacir/bin/isacir --version \
    && rm -rf /src
COPY deploy/docker/isacir-entrypoint.sh /usr/local/bin/isacir-entrypoint
# a fixed uid, so that volumes and bind-mounted secrets can be given to it on the host
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home isacir \
    && mkdir -p /data /weights/hub && chown -R isacir:isacir /data /weights
ENV PATH=/opt/isacir/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ISACIR_HOST=0.0.0.0 \
    ISACIR_PORT=8000 \
    ISACIR_WEIGHTS_DIR=/weights \
    HOME=/data
USER isacir
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ISACIR_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["isacir-entrypoint"]
CMD ["serve"]
