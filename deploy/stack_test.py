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

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


# ----- Docker itself ------------------------------------------------------------------------------
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


# ----- one compose stack --------------------------------------------------------------------------
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

    def wait_healthy(self, services: tuple[str, ...] = tuple(s for s, *_ in IMAGES), timeout: float = 300) -> None:
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


def random_png(seed: list[int]) -> bytes:
    """A 40 x 40 PNG of random pixels: a gallery image no other seed repeats (the installed images
    take seeds [100, i] and [101, i], the writers [1, i] and [2, i])."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def install(stack: Stack) -> None:
    """What an IT team runs once, after unpacking the weights: a gallery indexed into Milvus and a
    version registered and made active."""
    stack.run(
        "index",
        "--gallery",
        "/data/gallery",
        "--foundation",
        FOUNDATION,
        "--store",
        "milvus://milvus:19530",
        "--no-progress",
        "/import/images",
    )
    stack.run(
        "models",
        "add",
        "--gallery",
        "/data/gallery",
        "--version",
        "v1",
        "--query-encoder",
        "/import/qe",
        "--edge",
        "/import/edge",
        "--reason",
        "first install",
    )
    # the first version has no active one to be compared with, so the gate is passed over, with a reason
    stack.run(
        "models",
        "promote",
        "v1",
        "--to",
        "active",
        "--gallery",
        "/data/gallery",
        "--force",
        "--reason",
        "first install: no active version to compare with",
    )


def payload_of(stack: Stack, image: Path) -> str:
    """A device's token payload for ``image`` (``isacir edge-encode``, no torch), base64."""
    out = Path(tempfile.mkdtemp()) / "p.isat"
    sh(
        Path(sys.executable).with_name("isacir"),
        "edge-encode",
        "--edge",
        stack.dir / "import" / "edge",
        "--image",
        image,
        "--dtype",
        "int8",
        "--out",
        out,
    )
    return base64.b64encode(out.read_bytes()).decode()


def call(s: Any, method: str, url: str, **kw: Any) -> Any:
    """One request, waiting out the key's rate limit (429 and its Retry-After) rather than failing."""
    for _ in range(50):
        r = s.request(method, url, **kw)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))
    return r


def ok(resp: Any) -> dict:
    if resp.status_code >= 300:
        raise RuntimeError(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]}")
    return resp.json()


def search_by_upload(s: Any, url: str, image: Path, text: str = "in red") -> dict:
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    return ok(call(s, "POST", f"{url}/v1/search", files=files, data={"text": text, "k": 5}))


def answers(s: Any, url: str, images: list[Path]) -> list[list[tuple[int, float]]]:
    return [[(r["id"], round(r["score"], 5)) for r in search_by_upload(s, url, im)["results"]] for im in images]


class Writer:
    """Uploads of new images, each followed by a verdict naming it, in a thread until stopped;
    remembers what the service acknowledged (a 200). The images are made on the fly (``seed``), so
    there is always one more."""

    def __init__(self, stack: Stack, queries: list[str], seed: int) -> None:
        self.stack, self.queries, self.seed = stack, queries, seed
        self.acked_items: dict[int, int] = {}  # upload number -> gallery id
        self.acked_verdicts: set[tuple[str, int]] = set()
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        s, url, i = self.stack.session(), self.stack.url, 0
        while not self.stop.is_set():
            try:
                files = {"images": (f"w{self.seed}-{i}.png", random_png([self.seed, i]))}
                r = call(s, "POST", f"{url}/v1/gallery", files=files, timeout=30)
                added = r.json().get("added") if r.status_code == 200 else None
                if not added or added[0]["id"] is None:
                    self.failed += 1
                    time.sleep(0.2)  # a 502 while the service restarts: the next image, shortly
                    i += 1
                    continue
                item = self.acked_items[i] = added[0]["id"]
                qid = self.queries[i % len(self.queries)]
                v = s.post(
                    f"{url}/v1/feedback", json={"query_id": qid, "verdict": "corrected", "correct_id": item}, timeout=30
                )
                if v.status_code == 200:
                    self.acked_verdicts.add((qid, item))
                else:
                    self.failed += 1
                i += 1
            except Exception:  # the connection dropped mid-request: that write was never acknowledged
                self.failed += 1
                i += 1
                time.sleep(0.2)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def missing_writes(stack: Stack, items: Iterable[int], verdicts: set[tuple[str, int]]) -> int:
    """Acknowledged uploads not in the stack's gallery plus acknowledged verdicts not in its log."""
    return len(stack.missing_items(items)) + len(verdicts - stack.corrected_verdicts())


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(1)


# ----- the test -----------------------------------------------------------------------------------
def uploads_of(stack: Stack) -> list[Path]:
    return sorted((stack.dir / "import" / "uploads").glob("*.png"))


def probes_of(stack: Stack) -> list[Path]:
    """The photos whose answers are compared across a restart and a restore."""
    return sorted((stack.dir / "import" / "images").glob("*.png"))[:3] + uploads_of(stack)[:2]


def use_the_previous_release(a: Stack) -> tuple[str, int, int]:
    """A search and a verdict while the previous release serves; returns the verdict and the schema."""
    s = a.session()
    answer = search_by_upload(s, a.url, a.dir / "import" / "images" / "ima001.png")
    item = answer["results"][0]["id"]
    ok(
        s.post(
            f"{a.url}/v1/feedback", json={"query_id": answer["query_id"], "verdict": "confirmed", "candidate_id": item}
        )
    )
    return answer["query_id"], item, int(a.psql("SELECT version FROM isacir_feedback_schema")[0])


def check_the_upgrade(a: Stack, kept: tuple[str, int, int], checks: dict[str, Any]) -> None:
    """After the upgrade: the log's schema is this release's, and the earlier verdict is in it."""
    from isacir.feedback.store import SCHEMA_VERSION

    checks["schema_before_upgrade"] = kept[2]
    checks["previous_release_wrote_schema_4"] = kept[2] == 4
    checks["schema_after_upgrade"] = int(a.psql("SELECT version FROM isacir_feedback_schema")[0])
    checks["upgrade_migrated_schema"] = checks["schema_after_upgrade"] == SCHEMA_VERSION
    rows = a.psql("SELECT query_id || ' ' || candidate_id || ' ' || verdict FROM feedback")
    checks["upgrade_kept_verdict"] = rows == [f"{kept[0]} {kept[1]} confirmed"]
    checks["upgrade_serves_version"] = ok(call(a.session(), "GET", f"{a.url}/v1/info"))["model_version"] == "v1"


def use_the_api(a: Stack, checks: dict[str, Any]) -> list[str]:
    """Through HTTPS at the proxy: add images, search by upload and by token payload, send verdicts,
    read the pilot summary, and find the searches counted in Prometheus. Returns query ids."""
    import requests

    s, imp = a.session(), a.dir / "import"
    photo = imp / "images" / "ima000.png"
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in uploads_of(a)[:4]]
    checks["added_via_api"] = len(ok(s.post(f"{a.url}/v1/gallery", files=files))["added"])
    first = search_by_upload(s, a.url, photo)
    body = {"payload": payload_of(a, photo), "text": "in red", "k": 5}
    tokens = ok(s.post(f"{a.url}/v1/search/tokens", json=body))
    checks["search_upload_results"] = len(first["results"])
    checks["search_tokens_results"] = len(tokens["results"])
    checks["search_tokens_version"] = tokens["model_version"]
    for answer, verdict in [(first, "confirmed"), (tokens, "rejected")]:
        body = {"query_id": answer["query_id"], "verdict": verdict, "candidate_id": answer["results"][0]["id"]}
        ok(s.post(f"{a.url}/v1/feedback", json=body))
    checks["pilot_judged"] = ok(s.get(f"{a.url}/v1/pilot/summary"))["overall"]["judged"]
    checks["pilot_counts_every_verdict"] = checks["pilot_judged"] == 3  # with the previous release's one

    def searches_counted() -> bool:
        query = {"query": "sum(isacir_search_total)"}
        r = requests.get(f"http://127.0.0.1:{a.prom_port}/api/v1/query", params=query, timeout=10, proxies={})
        result = r.json()["data"]["result"]
        checks["prometheus_isacir_search_total"] = float(result[0]["value"][1]) if result else 0.0
        return checks["prometheus_isacir_search_total"] >= 2

    wait_for("Prometheus to scrape isacir_search_total", searches_counted)
    return [search_by_upload(s, a.url, p)["query_id"] for p in sorted((imp / "images").glob("*.png"))[:8]]


def kill_during_writes(a: Stack, queries: list[str], checks: dict[str, Any]) -> Writer:
    """``kill -9`` of the service while uploads and verdicts arrive; it is started again, and the
    writes go on until ten more are acknowledged."""
    with Writer(a, queries, seed=1) as w:
        wait_for("the first acknowledged uploads", lambda: len(w.acked_items) >= 5)
        sh(DOCKER, "kill", "-s", "KILL", a.container("isacir"))
        before_kill = len(w.acked_items)
        say(f"killed the service after {before_kill} acknowledged uploads")
        a.compose("up", "-d", "--no-build", "isacir")
        a.wait_healthy(("isacir", "proxy"))
        wait_for("writes after the restart", lambda: len(w.acked_items) >= before_kill + 10, timeout=300)
    checks["acked_uploads_across_kill"] = len(w.acked_items)
    checks["acked_verdicts_across_kill"] = len(w.acked_verdicts)
    checks["requests_refused_while_down"] = w.failed
    checks["kill_landed_mid_stream"] = w.failed > 0
    return w


def down_and_up(a: Stack, checks: dict[str, Any]) -> None:
    """``down`` then ``up``: the volumes keep the gallery, the registry and the log."""
    s = a.session()
    before, count = answers(s, a.url, probes_of(a)), ok(call(s, "GET", f"{a.url}/v1/info"))["gallery_items"]
    a.down()
    a.up()
    checks["same_answers_after_down_up"] = answers(s, a.url, probes_of(a)) == before
    checks["same_gallery_items_after_down_up"] = ok(call(s, "GET", f"{a.url}/v1/info"))["gallery_items"] == count


def backup_and_restore(a: Stack, base: str, queries: list[str], checks: dict[str, Any]) -> tuple[Stack, int]:
    """A backup taken while uploads and verdicts arrive, restored into a second, empty stack with the
    same secrets. Returns that stack and the writes acknowledged before the backup began that it
    lacks (or that the live stack lacks)."""
    db = "postgresql://isacir@postgres:5432/isacir"
    with Writer(a, queries, seed=2) as w:
        wait_for("uploads under load", lambda: len(w.acked_items) >= 2)
        items_before, verdicts_before = dict(w.acked_items), set(w.acked_verdicts)
        a.compose("exec", "-T", "isacir", "isacir-entrypoint", "backup", "--gallery", "/data/gallery",
                  "--feedback-db", db, "--out", "/data/backup.tar")  # fmt: skip
        checks["writes_acked_during_backup"] = len(w.acked_items) - len(items_before)
        checks["backup_under_load"] = checks["writes_acked_during_backup"] > 0
    lost = missing_writes(a, w.acked_items.values(), w.acked_verdicts)
    backup = WORK / "backup" / "backup.tar"
    backup.parent.mkdir(exist_ok=True)
    sh(DOCKER, "cp", f"{a.container('isacir')}:/data/backup.tar", backup)
    backup.chmod(0o644)
    b = Stack("b", base)
    shutil.rmtree(b.dir / "secrets", ignore_errors=True)
    sh("cp", "-a", a.dir / "secrets", b.dir / "secrets")  # the same keys and certificate, group kept
    b.key, b.ca = a.key, str(b.dir / "secrets" / "tls.crt")
    shutil.copytree(a.dir / "import", b.dir / "import", dirs_exist_ok=True)
    b.run("weights", "unpack", "/import/weights.tar")  # weights come from their bundle, not the backup
    b.run("restore", "/backup/backup.tar", "--out", "/data", "--feedback-db", db,
          volumes=(f"{backup.parent}:/backup:ro",))  # fmt: skip
    b.up()
    lost += missing_writes(b, items_before.values(), verdicts_before)
    # uploads acknowledged after the backup's copy are in the live stack only: compare on what both hold
    late = b.missing_items(w.acked_items.values())
    live = [[r for r in q if r[0] not in late] for q in answers(a.session(), a.url, probes_of(a))]
    restored = answers(b.session(), b.url, probes_of(a))
    checks["restored_same_answers"] = all(r[: len(x)] == x for r, x in zip(restored, live, strict=True))
    checks["uploads_after_backup"] = len(late)
    checks["restored_verdicts"] = len(b.corrected_verdicts())
    verify = b.run("gallery", "verify", "--gallery", "/data/gallery", "--json").splitlines()[-1]
    checks["restored_gallery_verified"] = json.loads(verify).get("ok")
    return b, lost


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
    disk = {"free_gb_at_start": free_gb()}
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
