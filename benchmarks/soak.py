"""Soak test: mixed search, feedback, upload and delete at fixed rates against ``isacir serve``.

Starts the service as its own process over a generated gallery (tiny random CLIP unless
``--foundation``), then runs four open-loop workloads at fixed rates for ``--duration`` seconds:
token searches, feedback on their results, image uploads and deletes of uploaded items. The
server's resident memory is sampled every second from ``/proc``. The last stdout line is JSON:
requests and status counts per workload, ``server_errors`` (5xx), ``rss_warm_mb`` (median
after the warm-up), ``rss_end_mb`` (median of the last tenth) and ``rss_growth``
(end / warm - 1). Exits non-zero on a 5xx or a growth above ``--max-growth``.

    python benchmarks/soak.py --duration 600 --json      # the 10-minute soak
    python benchmarks/soak.py --duration 60 --json       # what the tests run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import build_service, make_body  # noqa: E402

from isacir.serve.local import free_port, start_serve, stop_serve  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _png(i: int) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(1_000_000 + i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="Seconds of mixed load.")
    ap.add_argument("--warmup", type=float, default=None, help="Seconds before the memory baseline (default 20 %%).")
    ap.add_argument("--search-rate", type=float, default=20.0, help="Token searches per second.")
    ap.add_argument("--feedback-rate", type=float, default=5.0, help="Verdicts per second.")
    ap.add_argument("--upload-rate", type=float, default=1.0, help="Image uploads per second.")
    ap.add_argument("--delete-rate", type=float, default=0.5, help="Deletes of uploaded items per second.")
    ap.add_argument("--images", type=int, default=500, help="Gallery size at the start.")
    ap.add_argument("--foundation", help="Default: the tiny random CLIP.")
    ap.add_argument("--max-growth", type=float, default=0.10, help="Allowed resident-memory growth after warm-up.")
    ap.add_argument("--json", action="store_true", help="Accepted for symmetry: the last line is always JSON.")
    args = ap.parse_args()
    import requests

    work = Path(tempfile.mkdtemp(prefix="isacir-soak-"))
    server = None
    started = time.monotonic()

    def phase(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    # SIGTERM (a caller's timeout) unwinds through the finally below, which stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"building a service with {args.images} images in {work} ...", file=sys.stderr)
        gallery, qe_dir = build_service(work, args.images, args.foundation)
        phase("service built; starting the server")
        body = json.loads(make_body(qe_dir, "make it red"))
        key = "soak-key"
        (work / "keys").write_text(key + "\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "isacir.cli", "serve", "--gallery", str(gallery), "--query-encoder", str(qe_dir)]
        cmd += ["--port", str(port), "--api-key-file", str(work / "keys")]
        server = start_serve(cmd, url + "/readyz", work / "serve.log")
        phase("server ready; load starts")
        headers = {"X-API-Key": key}

        status: dict[str, Counter] = {w: Counter() for w in ("search", "feedback", "upload", "delete")}
        answered: list[dict] = []  # recent search answers, for feedback
        uploaded: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def search(s):
            r = s.post(url + "/v1/search/tokens", json={**body, "k": 5}, headers=headers, timeout=30)
            if r.status_code == 200:
                with lock:
                    answered.append(r.json())
                    del answered[:-200]
            return r.status_code

        def feedback(s):
            with lock:
                answer = answered.pop() if answered else None
            if answer is None:
                return None
            verdict = {
                "query_id": answer["query_id"],
                "verdict": "rejected",
                "candidate_id": answer["results"][0]["id"],
            }
            return s.post(url + "/v1/feedback", json=verdict, headers=headers, timeout=30).status_code

        counter = iter(range(10**9))

        def upload(s):
            i = next(counter)
            r = s.post(url + "/v1/gallery", files=[("images", (f"s{i}.png", _png(i)))], headers=headers, timeout=60)
            if r.status_code == 200:
                with lock:
                    uploaded.extend(a["id"] for a in r.json()["added"])
            return r.status_code

        def delete(s):
            with lock:
                item = uploaded.pop(0) if uploaded else None
            if item is None:
                return None
            return s.delete(f"{url}/v1/gallery/{item}", headers=headers, timeout=30).status_code

        def run(name, fn, rate):
            """Open loop: requests start on a fixed schedule whatever the latency (no coordinated omission)."""
            s = requests.Session()
            period, nxt = 1.0 / rate, time.monotonic()
            while not stop.is_set():
                try:
                    code = fn(s)
                except requests.RequestException as exc:
                    code = f"error:{type(exc).__name__}"
                if code is not None:
                    status[name][str(code)] += 1
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))

        rates = {
            "search": args.search_rate,
            "feedback": args.feedback_rate,
            "upload": args.upload_rate,
            "delete": args.delete_rate,
        }
        fns = {"search": search, "feedback": feedback, "upload": upload, "delete": delete}
        threads = [threading.Thread(target=run, args=(n, fns[n], r), daemon=True) for n, r in rates.items() if r > 0]
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while (elapsed := time.monotonic() - t0) < args.duration:
            mb = rss_mb(server.pid)
            if mb is not None:
                samples.append((elapsed, mb))
            time.sleep(1.0)
        stop.set()
        phase(f"load done: {dict((n, sum(c.values())) for n, c in status.items())}; stopping the clients")
        for t in threads:
            t.join(timeout=60)
        phase(f"clients stopped ({sum(t.is_alive() for t in threads)} still in a request); stopping the server")
        stop_serve(server)
        phase("server stopped")

        warmup = args.warmup if args.warmup is not None else 0.2 * args.duration
        warm = [mb for t, mb in samples if warmup <= t < warmup + max(5.0, 0.1 * args.duration)]
        end = [mb for t, mb in samples if t >= 0.9 * args.duration]
        rss_warm, rss_end = statistics.median(warm), statistics.median(end)
        server_errors = sum(n for c in status.values() for code, n in c.items() if code.startswith("5"))
        transport_errors = sum(n for c in status.values() for code, n in c.items() if code.startswith("error"))
        result = {
            "duration_s": args.duration,
            "rates_per_s": rates,
            "requests": {name: sum(c.values()) for name, c in status.items()},
            "status": {name: dict(c) for name, c in status.items()},
            "server_errors": server_errors,
            "transport_errors": transport_errors,
            "rss_warm_mb": round(rss_warm, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_max_mb": round(max(mb for _, mb in samples), 1),
            "rss_growth": round(rss_end / rss_warm - 1.0, 4),
            "rss_samples": len(samples),
            "gallery_images_at_start": args.images,
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result))
        ok = server_errors == 0 and transport_errors == 0 and result["rss_growth"] <= args.max_growth
        return 0 if ok else 1
    finally:
        if server is not None:  # a failure mid-run must not leave the server running
            stop_serve(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
