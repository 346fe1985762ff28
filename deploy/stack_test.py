"""``make stack-test``: the on-premises compose stack, built and used as a customer's IT team would.

It builds the images (cached after the first run), makes the secrets, brings a weights bundle into
the stack, indexes a gallery into the Milvus server, registers a query-side version, starts the
stack and then, only through HTTPS at the proxy: adds images, searches by upload and by an edge
token payload, sends verdicts, reads the pilot summary and asks Prometheus for the service's
search counter. Then the failures an install meets: ``kill -9`` of the service during uploads and
verdicts (every acknowledged write must be there after the restart), ``down`` and ``up`` (the
volumes keep everything), and a backup taken under load and restored into a second stack (the
same answers). The last stdout line is JSON: ``{"build_s", "up_s", "checks", "lost", "images"}``.

Docker is started when it is absent and this runs as root (Debian's docker.io and
docker-compose are installed first if missing); what it started, it stops. Without Docker and
without root it says it skipped and why, and exits 0. Where no registry is reachable, the base
image is made from Debian's packages with mmdebstrap (``ISACIR_BASE_IMAGE`` names another).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from stacktest.checks import (
    backup_and_restore,
    check_the_upgrade,
    down_and_up,
    install,
    kill_during_writes,
    missing_writes,
    use_the_api,
    use_the_previous_release,
)
from stacktest.common import Skip
from stacktest.docker import build_images, clean_up, docker_disk, ensure_base, ensure_docker, free_gb, stop_docker
from stacktest.stack import Stack, prepare_import, previous_release_source


class Phases:
    """Seconds per phase of the run, for the JSON (where the time goes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.t, 1)
        self.t = now


def main(started: float) -> dict:
    phases = Phases()
    disk: dict[str, Any] = {"free_gb_at_start": free_gb()}
    base = ensure_base()
    phases.done("base_image")
    sizes = build_images(base)
    phases.done("build")
    checks: dict[str, Any] = {}
    a, b = Stack("a", base), None
    try:
        a.init_secrets()
        prepare_import(a.dir / "import")
        phases.done("secrets_and_models")
        # installed and first used by the previous release, then upgraded in place (its weights
        # unpack is not what is tested, and on Debian 12's Python it needs this release's fix)
        a.run("weights", "unpack", "/import/weights.tar")
        a.run_previous_release(previous_release_source())
        install(a)
        phases.done("install")
        up_s = a.up()
        phases.done("up")
        kept = use_the_previous_release(a)
        a.upgrade()
        check_the_upgrade(a, kept, checks)
        phases.done("upgrade")
        queries = use_the_api(a, checks)
        phases.done("api")
        w = kill_during_writes(a, queries, checks)
        lost = missing_writes(a, w.acked_items.values(), w.acked_verdicts)
        phases.done("kill")
        down_and_up(a, checks)
        lost += missing_writes(a, w.acked_items.values(), w.acked_verdicts)
        phases.done("down_up")
        b, lost_in_backup = backup_and_restore(a, base, queries, checks)
        lost += lost_in_backup
        phases.done("backup_restore")
        build_s = phases.seconds["base_image"] + phases.seconds["build"]
        disk |= {"free_gb_at_end": free_gb(), "docker": docker_disk()}
        return {"build_s": round(build_s, 1), "up_s": round(up_s, 1), "total_s": round(time.monotonic() - started, 1),
                "phases": phases.seconds, "checks": checks, "lost": lost, "images": sizes, "base": base,
                "disk": disk}  # fmt: skip
    finally:
        for stack in (a, b):
            if stack is not None and os.environ.get("STACK_TEST_KEEP") != "1":
                stack.down(volumes=True, quiet=True)


if __name__ == "__main__":
    daemon, started = None, time.monotonic()
    # CI machines start empty and share their disk: leave nothing behind there; keep the layer
    # cache elsewhere (a second run then takes minutes, not ten)
    clean = os.environ.get("STACK_TEST_CLEAN", "1" if os.environ.get("CI") else "0") == "1"
    ready = False
    try:
        daemon = ensure_docker()
        ready = True
        result = main(started)
    except Skip as why:
        print(json.dumps({"skipped": str(why)}))
        sys.exit(0)
    finally:
        if clean and ready:
            clean_up()
        stop_docker(daemon)
    print(json.dumps(result))
    checks = result["checks"]
    failed = [k for k, v in checks.items() if v is False] + (["lost"] if result["lost"] else [])
    sys.exit(1 if failed else 0)
