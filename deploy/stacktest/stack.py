"""One compose stack (a copy of deploy/compose with its own ports, secrets and volumes), the
previous release it is first installed with, and what it is given to serve."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .client import call, random_png
from .common import DEPLOY, DOCKER, FOUNDATION, FOUNDATION_REPO, IMAGES, ROOT, SERVICES, TAG, WORK, free_port, sh


class Stack:
    """A copy of deploy/compose with its own .env (free ports, the test's images), secrets and volumes."""

    def __init__(self, name: str, base: str) -> None:
        self.name = f"isacir-st-{name}"
        self.dir = WORK / name
        self.files = ["docker-compose.yml"]
        if self.dir.exists():
            self.down(volumes=True, quiet=True)
            shutil.rmtree(self.dir)
        shutil.copytree(DEPLOY / "compose", self.dir, ignore=shutil.ignore_patterns("secrets", "import"))
        # compose checks that build contexts exist, and this copy lives elsewhere: name them absolutely
        spec = self.dir / "docker-compose.yml"
        text = spec.read_text().replace("context: ../docker", f"context: {DEPLOY / 'docker'}")
        spec.write_text(text.replace("context: ../..", f"context: {ROOT}"))
        self.https_port, self.prom_port = free_port(), free_port()
        env = (self.dir / ".env").read_text().splitlines()
        override = {
            "ISACIR_BASE_IMAGE": base,
            "ISACIR_HTTPS_BIND": f"127.0.0.1:{self.https_port}",
            "ISACIR_PROMETHEUS_BIND": f"127.0.0.1:{self.prom_port}",
            "ISACIR_THREADS": "1",
            **{var: f"isacir-{service}:{TAG}" for service, var, _, _ in IMAGES},
        }
        lines = [ln for ln in env if ln.split("=", 1)[0] not in override]
        (self.dir / ".env").write_text("\n".join(lines + [f"{k}={v}" for k, v in override.items()]) + "\n")
        (self.dir / "import").mkdir()
        self.url = f"https://127.0.0.1:{self.https_port}"

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        files = [x for f in self.files for x in ("-f", f)]
        return sh("docker-compose", "-p", self.name, *files, *args, cwd=self.dir, check=check, timeout=timeout,
                  env={"DOCKER": DOCKER})  # fmt: skip

    def run_previous_release(self, source: Path) -> None:
        """From now on the service runs the previous release's code (``source``, on PYTHONPATH inside
        the same image) with that release's command line, over this stack's volumes."""
        override = self.dir / "docker-compose.previous.yml"
        command = ["serve", "--gallery", "/data/gallery", "--host", "0.0.0.0", "--port", "8000",
                   "--feedback-db", "postgresql://isacir@postgres:5432/isacir",
                   "--api-key-file", "/run/secrets/keys/keys.toml"]  # fmt: skip
        spec = {
            "version": "2.4",
            "services": {
                "isacir": {
                    "environment": {"PYTHONPATH": "/previous"},
                    "volumes": [f"{source}:/previous:ro"],
                    "command": command,
                }
            },
        }
        override.write_text(json.dumps(spec, indent=1))  # JSON is YAML
        self.files = ["docker-compose.yml", override.name]

    def upgrade(self) -> None:
        """The image's own code again (drop the previous release), over the same volumes."""
        self.files = ["docker-compose.yml"]
        self.compose("up", "-d", "--no-build", "isacir")
        self.wait_healthy()

    def run(self, *args: str, volumes: tuple[str, ...] = ()) -> str:
        """``docker-compose run --rm isacir ARGS`` (its dependencies start first); its stdout."""
        mounts = [x for v in volumes for x in ("-v", v)]
        return self.compose("run", "--rm", "-T", *mounts, "isacir", *args, timeout=900).stdout

    def init_secrets(self) -> None:
        sh(self.dir / "init-secrets.sh", env={"DOCKER": DOCKER})
        self.key = (self.dir / "secrets" / "admin_key").read_text().strip()
        self.ca = str(self.dir / "secrets" / "tls.crt")

    def up(self) -> float:
        start = time.monotonic()
        self.compose("up", "-d", "--no-build")
        self.wait_healthy()
        return time.monotonic() - start

    def _ps(self, *filters: str, fmt: str) -> list[str]:
        """The stack's long-running containers (not `run` one-offs), through one Docker call: compose
        v1 is a Python program, and asking it per service made every health poll take seconds."""
        labels = [f"label=com.docker.compose.project={self.name}", "label=com.docker.compose.oneoff=False", *filters]
        args = [x for f in labels for x in ("--filter", f)]
        return sh(DOCKER, "ps", *args, "--format", fmt).stdout.split("\n")

    def container(self, service: str) -> str:
        found = [c for c in self._ps(f"label=com.docker.compose.service={service}", fmt="{{.ID}}") if c]
        if len(found) != 1:
            raise RuntimeError(f"{self.name}: {len(found)} running containers for {service}")
        return found[0]

    def wait_healthy(self, services: tuple[str, ...] = SERVICES, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._ps(fmt='{{.Label "com.docker.compose.service"}}\t{{.Status}}')
            status = dict(row.split("\t", 1) for row in rows if "\t" in row)
            states = {s: status.get(s, "absent") for s in services}
            if all("(healthy)" in v for v in states.values()):
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail", "40", check=False).stdout
                raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s: {states}\n{logs[-6000:]}")
            time.sleep(1)

    def down(self, volumes: bool = False, quiet: bool = False) -> None:
        if (self.dir / "docker-compose.yml").exists():
            self.compose("down", *(["-v"] if volumes else []), "--remove-orphans", check=not quiet)

    def psql(self, sql: str) -> list[str]:
        out = self.compose(
            "exec", "-T", "postgres", "psql", "-h", "/tmp", "-U", "isacir", "-d", "isacir", "-tAc", sql
        ).stdout
        return [ln for ln in out.splitlines() if ln.strip()]

    def corrected_verdicts(self) -> set[tuple[str, int]]:
        """The log's ``corrected`` verdicts as (query id, item id), read in PostgreSQL itself."""
        rows = self.psql("SELECT query_id || ' ' || candidate_id FROM feedback WHERE verdict = 'corrected'")
        return {(q, int(item)) for q, item in (row.split(" ") for row in rows)}

    def missing_items(self, items: Iterable[int]) -> set[int]:
        """The gallery ids among ``items`` that the service does not have."""
        s = self.session()
        return {i for i in items if call(s, "GET", f"{self.url}/v1/gallery/{i}").status_code != 200}

    # --- HTTPS through the proxy
    def session(self) -> Any:
        import requests

        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify; proxies must not apply
        s.verify = self.ca
        s.headers["X-API-Key"] = self.key
        return s


#: the last commit whose feedback log has schema 4 (before the review queue's schema 5): the release
#: an upgrade is tested from
PREVIOUS_RELEASE = "8b996c830c701d78925403d1bde8fc7632e53d13"


def previous_release_source() -> Path:
    """The previous release's ``isacir`` package (from git), with this checkout's vendored UI files."""
    dest = WORK / "previous"
    if not (dest / "isacir").is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            sh(
                "git",
                "-C",
                ROOT,
                "archive",
                "--format=tar",
                "-o",
                Path(tmp) / "src.tar",
                PREVIOUS_RELEASE,
                "src/isacir",
            )
            sh("tar", "-x", "-f", Path(tmp) / "src.tar", "-C", tmp)
            shutil.move(str(Path(tmp) / "src" / "isacir"), dest / "isacir")
        vendor = ROOT / "src" / "isacir" / "serve" / "static" / "vendor"
        shutil.copytree(vendor, dest / "isacir" / "serve" / "static" / "vendor", dirs_exist_ok=True)
    return dest


# ----- what the stack serves ----------------------------------------------------------------------
def prepare_import(folder: Path) -> None:
    """On the 'connected side' (this machine): a tiny foundation in a Hugging Face hub cache, packed
    with ``isacir weights pack``; an untrained query encoder for it and its edge package; images."""
    from isacir.testing import cache_hub_repo, save_tiny_openclip

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(save_tiny_openclip(Path(tmp) / "clip", seed=5).split("@", 1)[1])
        hub = Path(tmp) / "hub"
        cache_hub_repo(hub, FOUNDATION_REPO, {p.name: p for p in clip.iterdir() if p.name.startswith("open_clip_")})
        isacir = [str(Path(sys.executable).with_name("isacir"))]
        sh(
            *isacir,
            "weights",
            "pack",
            "--foundation",
            FOUNDATION,
            "--cache-dir",
            hub,
            "--no-download",
            "--out",
            folder / "weights.tar",
        )
        weights = Path(tmp) / "weights"
        sh(*isacir, "weights", "unpack", folder / "weights.tar", "--weights-dir", weights)
        offline = {"ISACIR_WEIGHTS_DIR": str(weights)}
        sh(
            *isacir,
            "query-encoder",
            "init",
            "--foundation",
            FOUNDATION,
            "--backbone",
            "mobilenetv3_small_050",
            "--tokens",
            "4",
            "--out",
            folder / "qe",
            env=offline,
        )
        sh(*isacir, "export-edge", "--query-encoder", folder / "qe", "--out", folder / "edge", env=offline)
    for n_sub, (sub, n) in enumerate([("images", 16), ("uploads", 4)]):
        (folder / sub).mkdir()
        for i in range(n):
            (folder / sub / f"{sub[:3]}{i:03d}.png").write_bytes(random_png([100 + n_sub, i]))
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # the service's user reads the bind mount
