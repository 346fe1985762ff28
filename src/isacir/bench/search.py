"""Vector-search benchmark: every FAISS index family against exact search in one run (and Milvus Lite).

Data (``--data``):

- ``clustered`` (the old default): tight clusters of 100 points at cosine ~0.9 to their centre.
  Almost any index does well on it, so it says little about real galleries.
- ``calibrated``: cluster sizes, the spread of points around their centre and how close the
  centres sit to each other, all measured by k-means on a real gallery's vectors
  (:func:`calibrate`), then reproduced at any size and dimension.
- ``uniform``: i.i.d. on the sphere (no structure: the worst case).

Queries (``--queries``): ``near`` are stored points plus a little noise ("more like this item");
``gap`` sit across a modality gap, at a fixed cosine (0.3 by default, what CLIP-family models show
between a caption and its image) to a stored point, displaced along one shared offset direction
plus noise, as composed text-side queries sit against image vectors. Recall@10 is measured against
exact search with the same queries; ``nprobe`` is tuned on a separate draw of the same query kind.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA_KINDS = ("clustered", "calibrated", "uniform")
QUERY_KINDS = ("near", "gap")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def calibrate(vecs: np.ndarray, clusters: int | None = None, seed: int = 0) -> dict:
    """The shape of a real gallery, from spherical k-means on its vectors (``sqrt(n)`` clusters).

    Returns cluster size fractions, quantiles of each point's cosine to its centre, and the mean
    cosine between centres (how much the whole gallery leans one way, as CLIP embeddings do).
    """
    import faiss

    vecs = np.ascontiguousarray(_unit(np.asarray(vecs, np.float32)))
    n, dim = vecs.shape
    k = clusters or max(2, int(round(math.sqrt(n))))
    if n < 2 * k:
        raise ValueError(f"calibration needs at least {2 * k} vectors, got {n}")
    km = faiss.Kmeans(dim, k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(vecs)
    cos, assign = km.index.search(vecs, 1)
    sizes = np.bincount(assign[:, 0], minlength=k)
    centres = _unit(km.centroids[sizes > 0])
    mean_centre = centres.mean(0)
    pairwise = (float(mean_centre @ mean_centre) * len(centres) ** 2 - len(centres)) / (
        len(centres) * (len(centres) - 1)
    )
    return {
        "source_n": int(n),
        "source_dim": int(dim),
        "clusters": int((sizes > 0).sum()),
        "size_fractions": sorted((sizes[sizes > 0] / n).round(6).tolist(), reverse=True),
        "cos_to_centre_quantiles": np.quantile(cos[:, 0], np.linspace(0, 1, 101)).round(5).tolist(),
        "centre_pairwise_cos": round(max(0.0, pairwise), 5),
    }


def _calibrated(n: int, dim: int, profile: dict, rng: np.random.Generator, chunk: int) -> np.ndarray:
    k = max(2, int(round(math.sqrt(n))))
    fractions = np.array(profile["size_fractions"])
    sizes = rng.choice(fractions, size=k, replace=True)
    sizes = np.maximum(1, np.round(sizes / sizes.sum() * n)).astype(np.int64)
    labels = np.repeat(np.arange(k), sizes)[:n]
    if len(labels) < n:
        labels = np.concatenate([labels, rng.integers(0, k, n - len(labels))])
    rng.shuffle(labels)
    lean = math.sqrt(profile["centre_pairwise_cos"])  # cos(c_i, c_j) ~= lean**2 for random r_i
    shared = _unit(rng.standard_normal(dim))
    centres = _unit(lean * shared + math.sqrt(1 - lean**2) * _unit(rng.standard_normal((k, dim))))
    quantiles = np.array(profile["cos_to_centre_quantiles"])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = centres[labels[start : start + m]]
        t = np.clip(np.interp(rng.random(m), np.linspace(0, 1, len(quantiles)), quantiles), 0.05, 0.9999)
        u = rng.standard_normal((m, dim)).astype(np.float32)
        u = _unit(u - (u * c).sum(1, keepdims=True) * c)  # orthogonal to the centre
        out[start : start + m] = _unit(c * t[:, None] + u * np.sqrt(1 - t**2)[:, None])  # cos to centre = t
    return out


def make_data(
    n: int, dim: int, kind: str = "clustered", seed: int = 0, chunk: int = 100_000, profile: dict | None = None
) -> np.ndarray:
    """``n`` unit vectors of the given kind (``calibrated`` needs a :func:`calibrate` profile)."""
    rng = np.random.default_rng(seed)
    if kind == "calibrated":
        if profile is None:
            raise ValueError("calibrated data needs a profile from calibrate() (--calibrate-from GALLERY)")
        return _calibrated(n, dim, profile, rng, chunk)
    if kind not in ("clustered", "uniform"):
        raise ValueError(f"data must be one of {', '.join(DATA_KINDS)}, not {kind!r}")
    out = np.empty((n, dim), dtype=np.float32)
    centres = None
    if kind == "clustered":
        centres = _unit(rng.standard_normal((max(1, n // 100), dim)).astype(np.float32))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        if centres is not None:
            x = centres[rng.integers(0, len(centres), m)] + 0.5 * x / math.sqrt(dim)
        out[start : start + m] = _unit(x)
    return out


def make_queries(data: np.ndarray, q: int, seed: int = 1, kind: str = "near", gap_cos: float = 0.3) -> np.ndarray:
    """``near``: stored points plus a little noise. ``gap``: at cosine ``gap_cos`` to a stored point,
    displaced along one offset direction shared by all queries (fixed by ``seed``'s stream) plus noise."""
    rng = np.random.default_rng(seed)
    dim = data.shape[1]
    src = data[rng.integers(0, len(data), q)]
    if kind == "near":
        return _unit(src + 0.2 * rng.standard_normal((q, dim)).astype(np.float32) / math.sqrt(dim))
    if kind != "gap":
        raise ValueError(f"queries must be one of {', '.join(QUERY_KINDS)}, not {kind!r}")
    offset = _unit(np.random.default_rng(12345).standard_normal(dim))  # the same gap for every draw
    w = offset[None, :] + _unit(rng.standard_normal((q, dim)))
    w = _unit(w - (w * src).sum(1, keepdims=True) * src)  # orthogonal to the source point
    return _unit(gap_cos * src + math.sqrt(1 - gap_cos**2) * w)


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
    data: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    exact_queries: int = 100,
    threads: int | None = None,
    kinds: tuple[str, ...] = ("auto",),
    tune_queries: np.ndarray | None = None,
    rerank: int = 100,
) -> dict:
    """Build each index family in ``kinds`` on the same data and measure it against exact search.

    The first family's figures are also the top-level keys (the report's shape before families
    were compared). Approximate families also report recall and latency with exact re-ranking of
    their top ``rerank`` (full-precision vectors from memory here; the gallery reads them from
    SQLite, a few page reads per query more).
    """
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = data.shape
    ids = np.arange(n, dtype=np.int64)
    truth, ex = _exact_baseline(data, queries, k, exact_queries)
    results = {}
    for kind in kinds:
        results[kind] = _bench_kind(data, ids, queries, truth, k, kind, tune_queries, rerank)
        results[kind].update(exact_p50_ms=round(statistics.median(ex), 3), exact_p99_ms=round(_pct(ex, 99), 3))
    first = results[kinds[0]]
    return {"backend": "faiss", "n": n, "dim": dim, **first, "queries": len(queries), "indexes": results}


def _exact_baseline(data: np.ndarray, queries: np.ndarray, k: int, timed: int) -> tuple[np.ndarray, list[float]]:
    """Exact top-k ids (the oracle) and exact-search latencies on the first ``timed`` queries."""
    import faiss

    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    _, truth = exact.search(queries, k)
    return truth, _latencies(lambda q: exact.search(q, k), queries[:timed])


def _bench_kind(data, ids, queries, truth, k, kind, tune_queries, rerank) -> dict:
    from ..gallery.stores import build_faiss_index, choose_index, index_bytes, recall_at_k, rerank_depth, tune_nprobe

    n, dim = data.shape
    t0 = time.perf_counter()
    params = choose_index(n, dim, kind)
    index = build_faiss_index(data, ids, params)
    if params["type"] != "flat":
        depth = rerank_depth(params)
        nprobe, tuned = tune_nprobe(index, data, ids, target=0.97, queries=tune_queries, depth=depth)
        params.update(nprobe=nprobe, tuned_recall_at_10=round(tuned, 4), tuned_within_top=depth)
    build_s = time.perf_counter() - t0
    _, got = index.search(queries, k)
    for q in queries[:20]:  # warm caches
        index.search(q[None], k)
    ann = _latencies(lambda q: index.search(q, k), queries)
    size = index_bytes(index)
    out = {
        "index": params,
        "build_s": round(build_s, 2),
        "ann_p50_ms": round(statistics.median(ann), 3),
        "ann_p99_ms": round(_pct(ann, 99), 3),
        "recall_at_10": round(recall_at_k(got, truth, k), 4),
        "bytes_per_vector": round(size / n, 1),
        "gib_per_million": round(size / n * 1e6 / 2**30, 3),
    }
    if params["type"] != "flat" and rerank > k:

        def reranked(q: np.ndarray) -> np.ndarray:
            _, cand = index.search(q, rerank)
            cand = cand[0][cand[0] >= 0]
            return cand[np.argsort(-(data[cand] @ q[0]), kind="stable")[:k]]

        got_r = np.array([np.pad(reranked(q[None]), (0, k), constant_values=-1)[:k] for q in queries])
        lat = _latencies(reranked, queries)
        out.update(
            rerank=rerank,
            recall_at_10_rerank=round(recall_at_k(got_r, truth, k), 4),
            rerank_p50_ms=round(statistics.median(lat), 3),
            rerank_p99_ms=round(_pct(lat, 99), 3),
        )
    return out


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
