"""FAISS, embedded: exact or IVF (Flat, SQ8, PQ) indexes, chosen by size and tuned on real queries."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .base import StoreError, VectorStore

EXACT_LIMIT = 50_000
#: ``auto`` keeps full-precision vectors in RAM up to this many bytes of them, then compresses.
FP32_BUDGET = 8 * 2**30
#: ... with 8-bit scalar quantization (4x smaller) up to this many bytes of fp32, and PQ beyond.
SQ8_BUDGET = 32 * 2**30
#: Fewer vectors than this cannot train an IVF quantizer well: such galleries stay flat.
IVF_MIN_TRAIN = 1_000
INDEX_KINDS = ("auto", "flat", "ivf_flat", "ivf_sq8", "ivf_pq")
#: What each kind keeps per vector, for ``--help`` texts and the docs.
INDEX_HELP = (
    "auto (by size: flat, then IVF-Flat, then IVF-SQ8, then IVF-PQ) | flat (exact) | ivf_flat | "
    "ivf_sq8 (8-bit scalar quantization, 4x smaller) | ivf_pq (product quantization, 32x smaller)"
)


def resolve_index_kind(n: int, dim: int, kind: str = "auto") -> str:
    """The index family for ``n`` vectors: ``kind`` itself, or the ``auto`` choice by size."""
    if kind not in INDEX_KINDS:
        raise StoreError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        fp32 = n * dim * 4
        if n < EXACT_LIMIT:
            return "flat"
        return "ivf_flat" if fp32 <= FP32_BUDGET else "ivf_sq8" if fp32 <= SQ8_BUDGET else "ivf_pq"
    if kind != "flat" and n < IVF_MIN_TRAIN:
        return "flat"
    return kind


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors of 8 dimensions each (96 bytes for 768-d), or the largest divisor of ``dim``
    that keeps sub-vectors at least 4 wide."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


def choose_index(n: int, dim: int, kind: str = "auto") -> dict:
    """Index family and parameters for ``n`` vectors, following autofaiss's rules of thumb.

    Exact (flat) for small galleries; an IVF index with ~4 sqrt(n) lists beyond that, storing the
    vectors in full (``ivf_flat``), as 8-bit scalars (``ivf_sq8``) or as PQ codes (``ivf_pq``).
    IVF (unlike HNSW) supports removals, which an incrementally maintained gallery needs. ``kind``
    forces a family (``auto`` picks by the RAM that full-precision vectors would take).
    """
    family = resolve_index_kind(n, dim, kind)
    if family == "flat":
        return {"type": "flat", "requested": kind}
    # at least 39 points per list (faiss's lower bound for a stable k-means fit)
    nlist = min(2 ** int(round(math.log2(4 * math.sqrt(n)))), max(1, 2 ** int(math.log2(max(1, n // 39)))))
    params = {"type": family, "requested": kind, "nlist": nlist, "train_size": min(n, 40 * nlist), "niter": 10}
    if family == "ivf_pq":
        params.update(m=pq_subquantizers(dim), nbits=8, train_size=min(n, max(40 * nlist, 256 * 39)))
    return params


#: real queries needed before ``nprobe`` is tuned on them rather than on stored vectors plus noise
MIN_TUNING_QUERIES = 50
#: exact re-ranking depth that compressed indexes are tuned for (``rerank`` of at least this much)
COMPRESSED_RERANK = 100


def rerank_depth(params: dict) -> int:
    """How many candidates an index family is tuned to hold the true top 10 in: 10 where it stores
    full vectors, :data:`COMPRESSED_RERANK` where its codes need exact re-ranking to rank well."""
    return COMPRESSED_RERANK if params["type"] in ("ivf_sq8", "ivf_pq") else 10


def index_factory_string(params: dict) -> str:
    kind = params["type"]
    if kind == "ivf_flat":
        return f"IVF{params['nlist']},Flat"
    if kind == "ivf_sq8":
        return f"IVF{params['nlist']},SQ8"
    if kind == "ivf_pq":
        return f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}"
    raise StoreError(f"unknown faiss index type {kind!r}")


def build_faiss_index(vecs: np.ndarray, ids: np.ndarray, params: dict, seed: int = 0):
    import faiss

    dim = vecs.shape[1]
    if params["type"] == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        index = faiss.index_factory(dim, index_factory_string(params), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = params.get("niter", 10)
        ivf.cp.seed = seed
        if params["type"] == "ivf_pq":
            # small galleries forced to PQ train on fewer points than faiss's 39 per code: fine, quietly
            faiss.downcast_index(ivf).pq.cp.min_points_per_centroid = 1
        rng = np.random.default_rng(seed)
        sample = (
            vecs[np.sort(rng.choice(len(vecs), size=params["train_size"], replace=False))]
            if len(vecs) > params["train_size"]
            else vecs
        )
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.nprobe = params.get("nprobe", 16)
        # id -> list position: removing or replacing a few items costs O(items), not a scan of every list
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    if len(ids):
        for start in range(0, len(ids), 100_000):  # bounded temporaries when encoding PQ/SQ codes
            index.add_with_ids(
                np.ascontiguousarray(vecs[start : start + 100_000], dtype=np.float32),
                np.ascontiguousarray(ids[start : start + 100_000], dtype=np.int64),
            )
    return index


def index_bytes(index) -> int:
    """Serialized size of a FAISS index: what it holds in RAM, within a few percent."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def tune_nprobe(
    index,
    vecs: np.ndarray,
    ids: np.ndarray,
    target: float = 0.97,
    k: int = 10,
    n_queries: int = 200,
    seed: int = 0,
    queries: np.ndarray | None = None,
    depth: int | None = None,
) -> tuple[int, float]:
    """Smallest nprobe whose recall@k against exact search reaches ``target`` (autofaiss-style).

    ``queries`` are the searches to tune for (text-side queries sit far from any stored vector);
    without them, stored vectors plus a little noise: "find things like this item". A compressed
    index (SQ, PQ) may never reach ``target``: its codes cap the recall whatever the probing, so
    the search stops where more lists stop helping. ``depth`` counts the exact top-k found anywhere
    in the index's top ``depth`` instead: what exact re-ranking of that many candidates recovers.
    """
    import faiss

    if queries is not None:
        q = np.ascontiguousarray(queries[:n_queries], dtype=np.float32)
    else:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(vecs), size=min(n_queries, len(vecs)), replace=False)
        q = vecs[pick] + rng.normal(scale=0.05 / math.sqrt(vecs.shape[1]), size=(len(pick), vecs.shape[1]))
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(np.ascontiguousarray(vecs, dtype=np.float32))
    _, rows = exact.search(q, k)
    truth = np.asarray(ids)[rows]
    ivf = faiss.extract_index_ivf(index)
    best = (ivf.nlist, 0.0)
    depth = max(k, depth or k)
    # every power of two up to nlist, and nlist itself (a full scan, where structureless data leads)
    steps = sorted({*(2**i for i in range(int(math.log2(ivf.nlist)) + 1)), ivf.nlist})
    for nprobe in steps:
        ivf.nprobe = nprobe
        _, got = index.search(q, depth)
        recall = sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth, strict=True)) / truth.size
        if depth > k and best[1] > 0 and recall < best[1] + 0.002:
            break  # compressed codes: a plateau where they, not the probing, limit the recall
        best = (nprobe, recall)
        if recall >= target:
            break
    ivf.nprobe = best[0]
    return best


def recall_at_k(got: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k that the approximate top-k contains."""
    hits = sum(len(set(g[:k].tolist()) & set(t[:k].tolist())) for g, t in zip(got, truth, strict=True))
    return hits / (len(truth) * k)


class FaissStore(VectorStore):
    """Embedded FAISS index persisted as ``index.faiss`` + ``index.json`` (both replaced atomically)."""

    def __init__(self, folder: str | os.PathLike, dim: int, kind: str = "auto"):
        import faiss

        resolve_index_kind(0, dim, kind)  # a clear error for an unknown kind, before anything is built
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        #: the index family asked for (``auto``: by size); ``params["type"]`` is what was built
        self.kind = kind
        self._faiss = faiss
        self.params: dict = {"type": "flat"}
        self.generation = 0
        self.index = None
        if not self._load():
            self.index = build_faiss_index(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), self.params)

    persist_is_costly = True

    def _load(self) -> bool:
        loaded = self.read_disk()
        if loaded is None:
            return False
        self.adopt(*loaded)
        return True

    def read_disk(self) -> tuple[object, dict, int] | None:
        """``(index, params, generation)`` as persisted, without touching the live index (a reader
        loads a newer index aside while searches go on, then swaps it in with :meth:`adopt`)."""
        meta = self.folder / "index.json"
        if not (meta.is_file() and (self.folder / "index.faiss").is_file()):
            return None
        # index.faiss is replaced before index.json: an index newer than the generation read here only
        # means some changes are replayed twice, and replaying is idempotent
        info = json.loads(meta.read_text())
        index = self._faiss.read_index(str(self.folder / "index.faiss"))
        if "nprobe" in info["params"]:
            self._faiss.extract_index_ivf(index).nprobe = info["params"]["nprobe"]
        return index, info["params"], int(info["generation"])

    def disk_params(self) -> dict:
        try:
            return dict(json.loads((self.folder / "index.json").read_text())["params"])
        except (OSError, ValueError, KeyError):
            return {}

    def adopt(self, index, params: dict, generation: int, persisted: bool = True) -> None:
        """Swap in an index built or loaded aside (under the caller's exclusive lock: a pointer swap)."""
        self.index, self.params, self.generation = index, params, generation
        if persisted:
            self.persisted_generation = generation

    def build(self, ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray | None = None) -> tuple[object, dict]:
        """A new index of the family that fits ``len(ids)`` vectors, trained and tuned, not swapped
        in: training takes seconds to minutes, and searches keep using the live index meanwhile.
        ``queries`` (real searches, e.g. composed text-side queries) are what ``nprobe`` is tuned on."""
        params = choose_index(len(ids), self.dim, self.kind)
        index = build_faiss_index(vecs, ids, params)
        if params["type"] != "flat":
            self.tune(index, params, ids, vecs, queries)
        params["built_for"] = int(len(ids))
        params["bytes_per_vector"] = round(index_bytes(index) / len(ids), 1) if len(ids) else None
        return index, params

    def disk_generation(self) -> int:
        try:
            return int(json.loads((self.folder / "index.json").read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return 0

    def reload(self) -> None:
        self._load()

    def persist(self) -> None:
        self._persist()

    def _persist(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.folder)
        os.close(fd)
        self._faiss.write_index(self.index, tmp)
        os.replace(tmp, self.folder / "index.faiss")
        info = {
            "params": self.params,
            "generation": self.generation,
            "count": int(self.index.ntotal),
            "time": time.time(),
        }
        tmpj = self.folder / ".index.json.tmp"
        tmpj.write_text(json.dumps(info))
        os.replace(tmpj, self.folder / "index.json")
        self.persisted_generation = info["generation"]

    @staticmethod
    def tune(index, params: dict, ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray | None = None) -> None:
        """Set ``nprobe`` (in the index and ``params``) for the recall target on ``queries``, or on
        stored vectors plus noise when there are too few real ones."""
        depth = rerank_depth(params)
        real = queries if queries is not None and len(queries) >= MIN_TUNING_QUERIES else None
        nprobe, recall = tune_nprobe(index, vecs, ids, depth=depth, queries=real)
        on = f"{min(len(real), 200)} logged queries" if real is not None else "stored vectors + noise"
        params.update(nprobe=nprobe, tuned_recall_at_10=round(recall, 4), tuned_within_top=depth, tuned_on=on)

    def rebuild(self, ids, vecs, generation, persist=True) -> None:
        self.adopt(*self.build(ids, vecs), generation, persisted=False)
        if persist:
            self._persist()

    def needs_rebuild(self, n: int) -> bool:
        """True when the gallery outgrew (or shrank below) what the current index was chosen for."""
        want = resolve_index_kind(n, self.dim, self.kind)
        if want != self.params["type"]:
            return True
        built = self.params.get("built_for", 0)
        return want != "flat" and (n > 4 * built or n < built // 4)

    def prepare(self, vecs: np.ndarray) -> tuple[int, np.ndarray]:
        """The part of adding vectors that needs no lock: an IVF index's codes (list number and
        encoded vector, the costly quantizer search). Valid only for the index it was made on."""
        vecs = np.ascontiguousarray(vecs, np.float32)
        if self.params["type"] == "flat" or not len(vecs):
            return id(self.index), vecs
        return id(self.index), self.index.sa_encode(vecs)

    def apply(self, upsert_ids, upsert_vecs, delete_ids, generation, persist=True, prepared=None) -> None:
        gone = np.unique(np.concatenate([np.asarray(delete_ids, np.int64), np.asarray(upsert_ids, np.int64)]))
        if len(gone):
            # an IDSelectorArray: the only kind an IVF index with a hashtable direct map accepts
            self.index.remove_ids(self._faiss.IDSelectorArray(len(gone), self._faiss.swig_ptr(gone)))
        if len(upsert_ids):
            ids = np.ascontiguousarray(upsert_ids, np.int64)
            if prepared is None or prepared[0] != id(self.index):
                prepared = self.prepare(upsert_vecs)
            if self.params["type"] == "flat":
                self.index.add_with_ids(prepared[1], ids)
            else:
                self.index.add_sa_codes(prepared[1], ids)
        self.generation = generation
        if persist:
            self._persist()

    def search(self, queries, k, ids=None, widen=1):
        if self.index.ntotal == 0:
            q = len(queries)
            return np.zeros((q, k), np.float32), -np.ones((q, k), np.int64)
        queries = np.ascontiguousarray(queries, np.float32)
        if ids is None and widen == 1:
            return self.index.search(queries, k)
        faiss = self._faiss
        sel = None
        if ids is not None:
            keep = np.ascontiguousarray(ids, dtype=np.int64)
            sel = faiss.IDSelectorBatch(len(keep), faiss.swig_ptr(keep))
        if self.params["type"] == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:
            ivf = faiss.extract_index_ivf(self.index)
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(ivf.nlist, ivf.nprobe * widen))
        return self.index.search(queries, k, params=params)

    def count(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        faiss = self._faiss
        if hasattr(self.index, "id_map"):
            return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        ivf = faiss.extract_index_ivf(self.index)
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if lists.list_size(i)
        ]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def describe(self) -> dict:
        return {"backend": "faiss", **self.params, "count": self.count(), "generation": self.generation}


# ----- Milvus ---------------------------------------------------------------------------------------
#: the collection of galleries created before each gallery had its own
