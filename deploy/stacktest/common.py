"""What every part of the stack test shares: where things are, the images, running commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORK = ROOT / "build" / "stack-test"
LOCAL_BASE = "local/bookworm:base"
TAG = "stacktest"
#: (compose service, image name in .env, Dockerfile, build context)
IMAGES = [
    ("milvus", "ISACIR_MILVUS_IMAGE", "milvus.Dockerfile", DEPLOY / "docker"),
    ("postgres", "ISACIR_POSTGRES_IMAGE", "postgres.Dockerfile", DEPLOY / "docker"),
    ("isacir", "ISACIR_IMAGE", "isacir.Dockerfile", ROOT),
    ("proxy", "ISACIR_PROXY_IMAGE", "caddy.Dockerfile", DEPLOY / "docker"),
    ("prometheus", "ISACIR_PROMETHEUS_IMAGE", "prometheus.Dockerfile", DEPLOY / "docker"),
]
#: the compose services, in the order of IMAGES
SERVICES = tuple(service for service, *_ in IMAGES)
FOUNDATION_REPO = "isacir-test/tiny-clip"
FOUNDATION = f"openclip:hf-hub:{FOUNDATION_REPO}"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
#: left in deploy/docker/wheels when this test put the wheels there (so a clean-up removes only those)
LINKED_MARK = ".linked-by-stack-test"


class Skip(Exception):
    """The stack test cannot run here (no Docker, not root); the reason is printed."""


def say(msg: str) -> None:
    print(f"[stack-test {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str | os.PathLike, check: bool = True, timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with the end of what it printed."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1", **kw.pop("env", {})}
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and res.returncode != 0:
        tail = (res.stdout[-2000:] + "\n" + res.stderr[-4000:]).strip()
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{tail}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
