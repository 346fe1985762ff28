"""Search latency while a gallery grows: p50/p99 idle, then while 20,000 items are added, in one run.

A gallery of ``--base`` items (random unit vectors, 768-d) is searched in a closed loop by
``--readers`` threads: idle for ``--idle-s`` seconds, then while a writer adds ``--add`` more
items in batches of 32 (the way ``isacir index`` and API uploads commit them), then idle again.
``p99_ratio`` is the add's p99 over the idle p99 before it (the goal is <= 3);
``p99_ratio_after`` uses the idle phase after the add instead, the stricter baseline when the add
switched the gallery to a faster index. With ``--base 40000`` the gallery crosses the exact-search
limit during the add, so the writer also trains an IVF index aside.

``--writer thread`` adds from a thread of the searching process (the service taking uploads);
``--writer process`` from another process (``isacir index`` beside a running service). Vectors are
generated rather than encoded so that the encoder's own CPU use does not hide the gallery's.

``--compare-to REV`` runs the same measurement with the code of git revision REV (a temporary
worktree) in the same run and adds it as ``before``. The last stdout line is JSON with
``idle``/``during``/``idle_after`` latency summaries and the ratios.

    python benchmarks/ingest_under_load.py --json
    python benchmarks/ingest_under_load.py --base 40000 --json   # the add also switches flat -> IVF
    python benchmarks/ingest_under_load.py --writer process --compare-to 61a4d97 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 768


class _Stub:
    """What a gallery needs of a foundation to be created: its name, fingerprint and dimension."""

    name = "bench:random"
    fingerprint = "bench-random-768"
    embed_dim = DIM


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32) / 8
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _add(gallery, start: int, vecs: np.ndarray, batch: int) -> None:
    """Commit in batches as ``Gallery.index`` does: each batch one transaction, then a sync."""
    for b in range(0, len(vecs), batch):
        chunk = vecs[b : b + batch]
        now = time.time()
        rows = [(start + b + j + 1, f"bench-{start + b + j}", None, None, None, now, "{}") for j in range(len(chunk))]
        with gallery.writing():
            gallery._commit_batch(rows, chunk)
            gallery.sync()


def writer_main(folder: str, start: int, count: int, batch: int, seed: int, nice: int = 0) -> None:
    from isacir.gallery import Gallery

    os.nice(nice)
    g = Gallery.open(folder)
    _add(g, start, _vectors(count, seed), batch)
    g.close()


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _summary(lat: list[float]) -> dict:
    return {
        "searches": len(lat),
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(_pct(lat, 99), 3),
        "max_ms": round(max(lat), 1),
    }


def measure(args) -> dict:
    """One measurement with whatever ``isacir`` is importable (this tree, or REV's via PYTHONPATH)."""
    from isacir.gallery import Gallery

    work = Path(tempfile.mkdtemp(prefix="isacir-ingest-"))
    try:
        folder = work / "gallery"
        g = Gallery.open_or_create(folder, _Stub())
        print(f"building a gallery of {args.base:,} items ...", file=sys.stderr)
        _add(g, 0, _vectors(args.base, 0), 5000)
        if hasattr(g, "checkpoint"):
            g.checkpoint()
        if hasattr(g, "follow"):
            g.follow()  # as the service does
        queries = _vectors(2000, 99)
        phase = ["idle"]
        lat: dict[str, list[float]] = {"idle": [], "during": [], "idle_after": []}
        stop = threading.Event()

        def reader(offset: int) -> None:
            i = offset
            while not stop.is_set():
                t0 = time.perf_counter()
                g.search(queries[i % len(queries)][None], 10)
                lat[phase[0]].append((time.perf_counter() - t0) * 1000)
                i += 7

        readers = [threading.Thread(target=reader, args=(r,), daemon=True) for r in range(args.readers)]
        for t in readers:
            t.start()
        time.sleep(args.idle_s)
        print(f"adding {args.add:,} items from a {args.writer} ...", file=sys.stderr)
        phase[0] = "during"
        t0 = time.perf_counter()
        if args.writer == "thread":
            _add(g, args.base, _vectors(args.add, 1), args.batch)
        else:
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]); from ingest_under_load import writer_main; "
                "writer_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), 1, int(sys.argv[6]))"
            )
            subprocess.run(
                [sys.executable, "-c", code, str(ROOT / "benchmarks"), str(folder), str(args.base), str(args.add),
                 str(args.batch), str(args.writer_nice)],
                check=True,
                env=os.environ.copy(),
            )  # fmt: skip
        add_s = time.perf_counter() - t0
        time.sleep(0.5)  # searches right after the add still count: they catch up with it
        phase[0] = "idle_after"
        time.sleep(args.idle_s)
        stop.set()
        for t in readers:
            t.join()
        store = g.store.describe()
        total = g.count()
        g.close()
        idle, during, after = _summary(lat["idle"]), _summary(lat["during"]), _summary(lat["idle_after"])
        return {
            "idle": idle,
            "during": during,
            "idle_after": after,
            "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
            "p99_ratio_after": round(during["p99_ms"] / after["p99_ms"], 2),
            "add_s": round(add_s, 1),
            "items_per_s": round(args.add / add_s, 1),
            "gallery_items": total,
            "index_after": {k: store.get(k) for k in ("type", "nlist", "nprobe")},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=60_000)
    ap.add_argument("--add", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--writer", choices=("thread", "process"), default="thread")
    ap.add_argument(
        "--writer-nice", type=int, default=10, help="Niceness of the writer process (isacir index's default)."
    )
    ap.add_argument("--compare-to", metavar="REV", help="Also measure the code of this git revision.")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="Accepted for symmetry: the last line is always JSON.")
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args)))
        return 0

    result: dict = {}
    if args.compare_to:
        tree = Path(tempfile.mkdtemp(prefix="isacir-before-")) / "tree"
        try:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), args.compare_to],
                check=True,
                capture_output=True,
            )
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            argv = [a for a in sys.argv[1:] if a != "--compare-to" and a != args.compare_to]
            proc = subprocess.run(
                [sys.executable, __file__, *argv, "--measure-only"], env=env, capture_output=True, text=True
            )
            if proc.returncode:
                sys.exit(f"the run of {args.compare_to} failed:\n{proc.stderr[-3000:]}")
            result["before"] = {"revision": args.compare_to, **json.loads(proc.stdout.strip().splitlines()[-1])}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    result.update(measure(args))
    if "before" in result:
        result["p99_during_vs_before"] = round(result["during"]["p99_ms"] / result["before"]["during"]["p99_ms"], 3)
    result.update(
        base=args.base,
        added=args.add,
        batch=args.batch,
        readers=args.readers,
        writer=args.writer,
        cpu_count=os.cpu_count(),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
