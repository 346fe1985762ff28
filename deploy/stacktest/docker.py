"""Docker itself (started and stopped when this test must) and the images it builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import DEPLOY, DOCKER, IMAGES, LINKED_MARK, LOCAL_BASE, ROOT, TAG, WORK, Skip, say, sh


def ensure_docker() -> subprocess.Popen | None:
    """Make ``docker`` and ``docker-compose`` usable; return the dockerd this started, if any."""
    root = os.geteuid() == 0
    if not (shutil.which(DOCKER) and shutil.which("docker-compose")):
        if not (root and shutil.which("apt-get")):
            raise Skip("docker and docker-compose are not installed, and installing them needs root and apt-get")
        say("installing Debian's docker.io, docker-compose and mmdebstrap")
        sh("apt-get", "update", "-q", timeout=600)
        sh(
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "docker.io",
            "docker-compose",
            "mmdebstrap",
            "openssl",
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    if sh(DOCKER, "info", check=False, timeout=60).returncode == 0:
        return None
    if not root:
        raise Skip("the Docker daemon is not running, and starting it needs root")
    say("starting dockerd")
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(WORK / "dockerd.log", "w")  # noqa: SIM115 (open while dockerd runs)
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):
        if sh(DOCKER, "info", check=False, timeout=30).returncode == 0:
            return daemon
        if daemon.poll() is not None:
            break
        time.sleep(0.5)
    daemon.kill()
    raise RuntimeError(f"dockerd did not start; its log ends:\n{(WORK / 'dockerd.log').read_text()[-3000:]}")


def docker_disk() -> dict[str, str]:
    """What Docker holds on disk now, by kind (images, build cache ...), as Docker prints it."""
    out = sh(DOCKER, "system", "df", "--format", "{{.Type}}\t{{.Size}}", check=False).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def free_gb(path: Path = ROOT) -> float:
    return round(shutil.disk_usage(path).free / 1e9, 1)


def clean_up() -> None:
    """Remove what this test built (its images, the local base, the build cache and the wheels it
    linked): on CI machines, whose disk is shared, several GB must not outlive the run."""
    say("removing the test's images, the build cache and the linked wheels")
    tags = [f"isacir-{service}:{TAG}" for service, *_ in IMAGES]
    if not os.environ.get("ISACIR_BASE_IMAGE"):
        tags.append(LOCAL_BASE)
    sh(DOCKER, "image", "rm", "-f", *tags, check=False)
    sh(DOCKER, "image", "prune", "-f", check=False)
    sh(DOCKER, "builder", "prune", "-af", check=False, timeout=600)
    wheels = DEPLOY / "docker" / "wheels"
    if (wheels / LINKED_MARK).exists():
        for whl in wheels.glob("*.whl"):
            whl.unlink()
        (wheels / LINKED_MARK).unlink()


def stop_docker(daemon: subprocess.Popen | None) -> None:
    if daemon is None:
        return
    say("stopping the dockerd this test started")
    daemon.terminate()
    try:
        daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()


def ensure_base() -> str:
    """The base image: ISACIR_BASE_IMAGE, or a Debian bookworm minbase made with mmdebstrap."""
    named = os.environ.get("ISACIR_BASE_IMAGE")
    if named:
        return named
    if sh(DOCKER, "image", "inspect", LOCAL_BASE, check=False).returncode == 0:
        return LOCAL_BASE
    if not shutil.which("mmdebstrap"):
        raise RuntimeError("no base image: install mmdebstrap, or name one with ISACIR_BASE_IMAGE")
    say(f"making {LOCAL_BASE} with mmdebstrap (1-2 minutes)")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        mirror = "http://deb.debian.org/debian"
        sh(
            "mmdebstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            tar,
            f"deb {mirror} bookworm main",
            f"deb {mirror} bookworm-updates main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
            timeout=900,
        )
        sh(DOCKER, "import", tar, LOCAL_BASE)
    return LOCAL_BASE


def local_torch_wheels() -> bool:
    """Where pip finds torch 2.14.1 on local disk (this project's machines), put it and what it needs
    into deploy/docker/wheels so the image build installs from there instead of downloading.

    Files pip would take from local disk are hard-linked (several GB of CUDA wheels, no second
    copy); the rest are downloaded. Returns whether this call filled the folder."""
    dest = DEPLOY / "docker" / "wheels"
    if list(dest.glob("torch-2.14.1-*.whl")):
        return False
    config = sh(sys.executable, "-m", "pip", "config", "list", check=False).stdout
    # each setting's value may hold several places (extra-index-url 'file:///a file:///b')
    values = [v for line in config.splitlines() if "=" in line for v in line.split("=", 1)[1].strip("'\"").split()]
    local = [p for p in (Path(v.removeprefix("file://")) for v in values) if p.is_absolute() and p.is_dir()]
    # a find-links folder holds wheels; a file:// simple index keeps them in a folder beside it
    if not any(list(r.glob("torch-2.14.1-*.whl")) + list(r.parent.glob("*/torch-2.14.1-*.whl")) for r in local):
        return False  # the build takes torch from TORCH_INDEX
    say("linking the local torch wheels into deploy/docker/wheels")
    wanted = ("torch==2.14.1", "torchvision==0.29.1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        sh(sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
           "--only-binary", ":all:", "--report", report, *wanted, timeout=600)  # fmt: skip
        urls = [item["download_info"]["url"] for item in json.loads(report.read_text())["install"]]
    for url in urls:
        if url.startswith("file://"):
            link_or_copy(Path(url.removeprefix("file://")), dest)
    # pip download keeps what is already in the folder and fetches only the rest
    sh(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d", dest, *wanted,
       timeout=1200)  # fmt: skip
    return True


def link_or_copy(src: Path, folder: Path) -> None:
    """Hard-link ``src`` into ``folder`` (no space used), or copy it across file systems."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    if target.exists():
        return
    try:
        os.link(src, target)
    except OSError:
        shutil.copy2(src, target)


def build_images(base: str) -> dict[str, int]:
    """Build each image (the layer cache makes a second run fast); return their sizes in bytes."""
    ca = DEPLOY / "docker" / "ca"
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, ca / crt.name)  # a TLS-inspecting proxy's authority, for pip inside the build
    if local_torch_wheels():
        (DEPLOY / "docker" / "wheels" / LINKED_MARK).touch()
    sizes = {}
    for service, _, dockerfile, context in IMAGES:
        tag = f"isacir-{service}:{TAG}"
        say(f"building {tag}")
        sh(
            DOCKER,
            "build",
            "-q",
            "-f",
            DEPLOY / "docker" / dockerfile,
            "--build-arg",
            f"BASE={base}",
            "-t",
            tag,
            context,
            timeout=1800,
        )
        sizes[tag] = int(sh(DOCKER, "image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())
    return sizes
