"""Load test of ``POST /v1/search/tokens`` with wrk (Debian package ``wrk``) over loopback.

Starts ``isacir serve`` as its own process (API key on), makes one real token payload with the
served query encoder, then runs wrk at a fixed concurrency for a bounded duration and prints
throughput, p50, p99 and errors as JSON (last stdout line). The server is stopped at the end.

    python benchmarks/load_test.py                      # tiny random models, generated gallery
    python benchmarks/load_test.py --gallery G --query-encoder Q   # your own (e.g. the demo's)
    python benchmarks/load_test.py --connections 16 --duration 30
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny(work: Path, n_images: int) -> tuple[Path, Path]:
    """A generated gallery over tiny random open_clip weights and an untrained query encoder."""
    import numpy as np
    from PIL import Image

    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.testing import save_tiny_openclip

    fnd = create_foundation(save_tiny_openclip(work / "foundation"))
    rng = np.random.default_rng(0)
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img_dir / f"{i:05d}.png")
    gallery = Gallery.open_or_create(work / "gallery", fnd)
    gallery.index([str(img_dir)], fnd, progress=False)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=Path)
    ap.add_argument("--query-encoder", type=Path)
    ap.add_argument("--images", type=int, default=2000, help="Gallery size when building the tiny service.")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads.")
    ap.add_argument("--duration", type=int, default=20, help="Seconds of load.")
    ap.add_argument("--text", default="make it red")
    ap.add_argument("--torch-threads", type=int, default=1, help="Server-side torch threads.")
    args = ap.parse_args()

    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="isacir-load-"))
    try:
        if args.gallery is None or args.query_encoder is None:
            print(f"building a tiny service with {args.images} gallery images in {work} ...", file=sys.stderr)
            gallery, qe_dir = build_tiny(work, args.images)
        else:
            gallery, qe_dir = args.gallery, args.query_encoder
        key = "load-test-key"
        (work / "keys").write_text(key + "\n")
        body = make_body(qe_dir, args.text)
        lua = work / "post.lua"
        lua.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["X-API-Key"] = "{key}"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        port = _free_port()
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
            "--threads",
            str(args.torch_threads),
        ]
        server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.time() > deadline:
                        raise SystemExit(f"server did not start:\n{server.stderr.read()}") from None
                    time.sleep(0.3)
            # one request by hand: a wrong setup must fail here, not as 100% errors under load
            req = urllib.request.Request(
                url + "/v1/search/tokens",
                data=body.encode(),
                method="POST",
                headers={"Content-Type": "application/json", "X-API-Key": key},
            )
            first = json.loads(urllib.request.urlopen(req, timeout=60).read())
            assert len(first["results"]) == 10, first
            out = subprocess.run(
                [
                    wrk,
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
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        print(out, file=sys.stderr)
        result = parse_wrk(out)
        result.update(
            tool="wrk",
            route="/v1/search/tokens",
            connections=args.connections,
            duration_s=args.duration,
            payload_bytes=len(base64.b64decode(json.loads(body)["payload"])),
            cpu_count=os.cpu_count(),
        )
        from isacir.gallery import Gallery

        result["gallery_items"] = Gallery.open(gallery).count()
        print(json.dumps(result))
        return 0 if result["errors"] == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
