"""Vector-search benchmark: ANN vs exact on the FAISS backend (and Milvus Lite), one run.

Data are random unit vectors drawn around random cluster centres (``--data clustered``, the
default: real embeddings are clustered, and on structureless data "the 10 nearest neighbours"
beyond the first are ties that no index can find without scanning everything), or i.i.d. uniform
on the sphere (``--data uniform``). Queries are stored points plus noise ("more like this item").
Recall@10 is measured against exact search on the same data.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(n: int, dim: int, kind: str = "clustered", seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    centres = None
    if kind == "clustered":
        centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    elif kind != "uniform":
        raise ValueError("data must be 'clustered' or 'uniform'")
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        if centres is not None:
            x = centres[rng.integers(0, len(centres), m)] + 0.5 * x / math.sqrt(dim)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_queries(data: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data), q)
    x = data[pick] + 0.2 * rng.standard_normal((q, data.shape[1])).astype(np.float32) / math.sqrt(data.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _latencies(search_one, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search_one(q[None])
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def bench_faiss(
    data: np.ndarray, queries: np.ndarray, k: int = 10, exact_queries: int = 100, threads: int | None = None
) -> dict:
    import faiss

    from ..gallery.stores import build_faiss_index, choose_index, recall_at_k, tune_nprobe

    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = data.shape
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    params = choose_index(n, dim)
    index = build_faiss_index(data, ids, params)
    if params["type"] != "flat":
        nprobe, tuned = tune_nprobe(index, data, ids, target=0.97)
        params.update(nprobe=nprobe, tuned_recall_at_10=round(tuned, 4))
    build_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(dim)
    exact.add(data)
    _, truth = exact.search(queries, k)
    _, got = index.search(queries, k)
    recall = recall_at_k(got, truth, k)
    for q in queries[:20]:  # warm caches
        index.search(q[None], k)
    ann = _latencies(lambda q: index.search(q, k), queries)
    ex = _latencies(lambda q: exact.search(q, k), queries[:exact_queries])
    return {
        "backend": "faiss",
        "n": n,
        "dim": dim,
        "index": params,
        "build_s": round(build_s, 2),
        "ann_p50_ms": round(statistics.median(ann), 3),
        "ann_p99_ms": round(_pct(ann, 99), 3),
        "exact_p50_ms": round(statistics.median(ex), 3),
        "exact_p99_ms": round(_pct(ex, 99), 3),
        "recall_at_10": round(recall, 4),
        "queries": len(queries),
    }


def bench_milvus(data: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    from ..gallery.stores import MilvusStore, recall_at_k

    n, dim = data.shape
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = MilvusStore(str(Path(tmp) / "bench.db"), dim, Path(tmp))
        store.apply(np.arange(n, dtype=np.int64), data, np.zeros(0, np.int64), generation=1)
        build_s = time.perf_counter() - t0
        exact = data @ queries.T
        truth = np.argsort(-exact, axis=0)[:k].T
        _, got = store.search(queries, k)
        recall = recall_at_k(got, truth, k)
        lat = _latencies(lambda q: store.search(q, k), queries[:200])
        store.close()
    p50, p99 = round(statistics.median(lat), 3), round(_pct(lat, 99), 3)
    return {
        "backend": "milvus-lite",
        "n": n,
        "dim": dim,
        "index": store.describe(),
        "note": "Milvus Lite runs every index as FLAT, so its ANN search is the exact search",
        "build_s": round(build_s, 2),
        "ann_p50_ms": p50,
        "ann_p99_ms": p99,
        "exact_p50_ms": p50,
        "exact_p99_ms": p99,
        "recall_at_10": round(recall, 4),
        "queries": min(200, len(queries)),
    }
