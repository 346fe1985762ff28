"""ANN on a real gallery with real composed queries: Shapes-CIR, forced IVF families, in one run.

The Shapes-CIR gallery (encoded by the bench's own trained foundation) and its 500 test queries
composed by the trained ISA encoder, as the service composes them. Each IVF family is built on the
gallery and its ``nprobe`` tuned two ways: on stored vectors plus noise (what a gallery without a
query history gets) and on the first 250 composed queries (what ``isacir gallery tune`` does with
the queries a service logged). Both are measured on the other 250: recall@10 against exact search,
the task's R@10 (a correct target in the top 10, the reference left out) against exact search's,
and latency. Needs the bench cache of ``isacir-lab bench shapes --seed S --out OUT`` (built if missing).

    python benchmarks/shapes_ann.py --out runs/shapes --seed 0 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def task_recall(rankings: list[list[int]], queries, names: list[str], k: int = 10) -> float:
    hits = 0
    for row, q in zip(rankings, queries, strict=True):
        top = [names[i] for i in row if i >= 0 and names[i] != q.reference][:k]
        hits += any(t in top for t in q.targets)
    return 100.0 * hits / len(queries)


def exact_order(row: np.ndarray, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Candidates re-sorted by their exact score (missing slots, -1, stay last)."""
    found = row[row >= 0]
    ordered = found[np.argsort(-(gallery[found] @ query), kind="stable")]
    return np.concatenate([ordered, -np.ones(len(row) - len(found), dtype=row.dtype)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/shapes"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default="ivf_flat,ivf_sq8,ivf_pq")
    ap.add_argument("--json", action="store_true", help="Accepted for symmetry: the last line is always JSON.")
    args = ap.parse_args()

    import faiss

    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import encode_gallery, encode_queries
    from isacir.gallery.stores import build_faiss_index, choose_index, recall_at_k, rerank_depth, tune_nprobe
    from isacir_lab.shapes.bench import ShapesBenchConfig, cached_isa

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    world, fnd, _, qe = cached_isa(args.out, ShapesBenchConfig(seed=args.seed), log=log, progress=False)
    bench = load_shapes(world)
    names = list(bench.gallery)
    gallery = encode_gallery(fnd, [bench.gallery[n] for n in names], progress=False)
    queries = encode_queries(bench, fnd, gallery, names, "isa", qe)
    tune_q, test_q = queries[:250], queries[250:]
    test_items = bench.queries[250:]
    ids = np.arange(len(names), dtype=np.int64)
    k_fetch = 11  # the reference may be among the results
    exact = faiss.IndexFlatIP(gallery.shape[1])
    exact.add(gallery)
    _, truth = exact.search(test_q, 10)
    _, exact_rank = exact.search(test_q, k_fetch)
    result: dict = {
        "gallery": len(names),
        "dim": int(gallery.shape[1]),
        "queries_tuned_on": len(tune_q),
        "queries_measured": len(test_q),
        "exact_task_r10": round(task_recall(exact_rank.tolist(), test_items, names), 2),
        "families": {},
    }
    for kind in args.families.split(","):
        params = choose_index(len(names), gallery.shape[1], kind)
        index = build_faiss_index(gallery, ids, params)
        ivf = faiss.extract_index_ivf(index)
        rows = {}
        for tuned_on, tq in (("stored vectors + noise", None), ("composed queries", tune_q)):
            depth = rerank_depth(params)
            nprobe, tuned = tune_nprobe(index, gallery, ids, depth=depth, queries=tq)
            ivf.nprobe = nprobe
            _, got = index.search(test_q, max(depth, k_fetch))
            times = []
            for q in test_q:
                t0 = time.perf_counter()
                index.search(q[None], 10)
                times.append((time.perf_counter() - t0) * 1000)
            reranked = got
            if depth > 10:  # compressed: exact re-ranking of the top `depth`, as the gallery does
                reranked = np.array([exact_order(row, q, gallery) for row, q in zip(got, test_q, strict=True)])
            rows[tuned_on] = {
                "nprobe": nprobe,
                "recall_at_10": round(recall_at_k(got[:, :10], truth, 10), 4),
                "recall_at_10_reranked": round(recall_at_k(reranked[:, :10], truth, 10), 4) if depth > 10 else None,
                "task_r10": round(task_recall(reranked[:, :k_fetch].tolist(), test_items, names), 2),
                "p50_ms": round(statistics.median(times), 3),
            }
        result["families"][kind] = {"nlist": params["nlist"], "tuned_on": rows}
        log(f"{kind}: {json.dumps(rows)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
