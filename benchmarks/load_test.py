"""Load test of ``POST /v1/search/tokens`` with wrk (Debian package ``wrk``) over loopback.

Starts ``isacir serve`` as its own process (API key on), makes one real token payload with the
served query encoder, then runs wrk at a fixed concurrency for a bounded duration. The last stdout
line is JSON: ``rps``, ``p50_ms``, ``p99_ms``, ``errors``, ``requests`` and
``log_commits_per_query`` (query-log commits over answered searches, read from the server's
``/metrics`` before and after the load), plus the details.

``--compare-to REV`` also serves the same gallery and model with the code of git revision REV
(checked out in a temporary worktree), one after the other in the same run, and adds ``before``
and the throughput ratio: a before/after comparison on one machine, not across machines.

    python benchmarks/load_test.py --json                       # tiny random CLIP, generated gallery
    python benchmarks/load_test.py --foundation openclip:ViT-B-32 --images 500 --json   # ViT-B/32 size, random init
    python benchmarks/load_test.py --compare-to c84993f --json  # before/after in one run
    python benchmarks/load_test.py --gallery G --query-encoder Q   # your own (e.g. the demo's)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_service(work: Path, n_images: int, foundation: str | None) -> tuple[Path, Path]:
    """A generated gallery over ``foundation`` (default: tiny random open_clip) and an untrained query encoder."""
    import numpy as np
    from PIL import Image

    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.testing import save_tiny_openclip

    fnd = create_foundation(foundation or save_tiny_openclip(work / "foundation"))
    rng = np.random.default_rng(0)
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img_dir / f"{i:05d}.png")
    gallery = Gallery.open_or_create(work / "gallery", fnd)
    gallery.index([str(img_dir)], fnd, progress=n_images > 2000)
    gallery.close()
    qe = QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=8, image_size=64)
    qe.save_pretrained(work / "query-encoder")
    return work / "gallery", work / "query-encoder"


def make_body(query_encoder: Path, text: str) -> str:
    from PIL import Image

    from isacir.edge.payload import encode_payload
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    cfg = json.loads((query_encoder / "config.json").read_text())
    fnd = create_foundation(cfg["foundation_id"])
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd).eval()
    img = Image.new("RGB", (64, 64), (200, 40, 40))
    tokens = qe.encode_images([img], foundation=fnd)[0].float().numpy()
    payload = encode_payload(tokens, qe.fingerprint, "fp16")
    return json.dumps({"payload": base64.b64encode(payload).decode(), "text": text, "k": 10})


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}_ms"] = round(_ms(*m.groups()), 2) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    res["errors"] = res["non_2xx"] + res["socket_errors"]
    return res


def scrape(url: str, key: str) -> dict[str, float]:
    """Counter totals from ``/metrics`` (summed over labels)."""
    req = urllib.request.Request(url + "/metrics", headers={"X-API-Key": key})
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(isacir_[a-z_]+_total)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def worktree(rev: str, into: Path) -> Path:
    """The code of git revision ``rev``, checked out beside the repository's history (read-only use)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(into), rev],
        check=True,
        capture_output=True,
        text=True,
    )
    return into / "src"


def run_load(args, gallery: Path, qe_dir: Path, body: str, work: Path, src: Path | None, threads: int | None) -> dict:
    """Serve with the code under ``src`` (None: this checkout), put wrk's load on it, stop it.

    ``threads``: the server's torch threads (None: torch's choice, every core)."""
    from isacir.serve.local import free_port, start_serve, stop_serve

    key = "load-test-key"
    (work / "keys").write_text(key + "\n")
    lua = work / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-API-Key"] = "{key}"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "isacir.cli",
        "serve",
        "--gallery",
        str(gallery),
        "--query-encoder",
        str(qe_dir),
        "--port",
        str(port),
        "--api-key-file",
        str(work / "keys"),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    if src is None:
        cmd += args.serve_args.split()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    url = f"http://127.0.0.1:{port}"
    server = start_serve(cmd, url + "/healthz", work / f"serve-{port}.log", env)
    try:
        # one request by hand: a wrong setup must fail here, not as 100% errors under load
        req = urllib.request.Request(
            url + "/v1/search/tokens",
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json", "X-API-Key": key},
        )
        first = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert len(first["results"]) == 10, first
        before = scrape(url, key)
        out = subprocess.run(
            [
                shutil.which("wrk") or "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(lua),
                url + "/v1/search/tokens",
            ],
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=True,
        ).stdout
        after = scrape(url, key)
    finally:
        stop_serve(server, timeout=30)
    print(out, file=sys.stderr)
    res = parse_wrk(out)
    searches = after.get("isacir_search_total", 0.0) - before.get("isacir_search_total", 0.0)
    commits = after.get("isacir_query_log_commits_total")
    per_query = None
    if commits is not None and searches > 0:
        per_query = round((commits - before.get("isacir_query_log_commits_total", 0.0)) / searches, 4)
    return {
        "rps": res["requests_per_s"],
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "errors": res["errors"],
        "requests": res["requests"],
        # servers older than group commit have no counter: they commit once per query
        "log_commits_per_query": per_query,
        "p90_ms": res["p90_ms"],
        "p99_over_p50": round(res["p99_ms"] / res["p50_ms"], 2) if res["p50_ms"] and res["p99_ms"] else None,
        "answered_searches": int(searches),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=Path)
    ap.add_argument("--query-encoder", type=Path)
    ap.add_argument(
        "--foundation",
        help="Foundation for the generated service (default: tiny random CLIP); "
        "openclip:ViT-B-32 is the ViT-B/32 architecture with random weights.",
    )
    ap.add_argument("--images", type=int, default=2000, help="Gallery size when building the service.")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads.")
    ap.add_argument("--duration", type=int, default=20, help="Seconds of load.")
    ap.add_argument("--text", default="make it red")
    ap.add_argument("--torch-threads", type=int, default=None, help="Server-side torch threads (default: torch's).")
    ap.add_argument("--compare-to", metavar="REV", help="Also load the code of this git revision (before/after).")
    ap.add_argument(
        "--serve-args",
        default="",
        help="Extra `isacir serve` options for this checkout's server, e.g. '--query-log async --max-batch 1'.",
    )
    ap.add_argument("--json", action="store_true", help="Accepted for symmetry: the last line is always JSON.")
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="isacir-load-"))
    tree = work / "before-src"
    try:
        if args.gallery is None or args.query_encoder is None:
            what = args.foundation or "the tiny random CLIP"
            print(f"building a service over {what} with {args.images} gallery images in {work} ...", file=sys.stderr)
            gallery, qe_dir = build_service(work, args.images, args.foundation)
        else:
            gallery, qe_dir = args.gallery, args.query_encoder
        body = make_body(qe_dir, args.text)
        result: dict = {}
        if args.compare_to:
            # The older server ran one composed query per request thread: give it both its usual
            # setting (1 torch thread per request) and torch's default, and compare with the better.
            src = worktree(args.compare_to, tree)
            tried = [{"torch_threads": t, **run_load(args, gallery, qe_dir, body, work, src, t)} for t in (1, None)]
            before = max(tried, key=lambda r: r["rps"] or 0.0)
        result.update(run_load(args, gallery, qe_dir, body, work, None, args.torch_threads))
        result["torch_threads"] = args.torch_threads
        if args.compare_to:
            result["before"] = {"revision": args.compare_to, **before}
            result["before_tried"] = tried
            if before["rps"]:
                result["rps_ratio"] = round(result["rps"] / before["rps"], 2)
        from isacir.gallery import Gallery

        result.update(
            tool="wrk",
            route="/v1/search/tokens",
            foundation=json.loads((qe_dir / "config.json").read_text())["foundation_id"],
            connections=args.connections,
            duration_s=args.duration,
            payload_bytes=len(base64.b64decode(json.loads(body)["payload"])),
            cpu_count=os.cpu_count(),
            gallery_items=Gallery.open(gallery).count(),
        )
        print(json.dumps(result))
        return 0 if result["errors"] == 0 and result.get("before", {}).get("errors", 0) == 0 else 1
    finally:
        if tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
