"""Vector stores behind one small interface: FAISS embedded (default) and Milvus.

The gallery's SQLite database is the source of truth for vectors; a store is a derived search
structure kept in step through the gallery's change log, so every store update is idempotent
(upsert/delete by id) and a crash at any point is repaired by replaying the log.
"""

from __future__ import annotations

from pathlib import Path

from .base import StoreError, VectorStore
from .faiss_store import (
    COMPRESSED_RERANK,
    EXACT_LIMIT,
    INDEX_HELP,
    INDEX_KINDS,
    IVF_MIN_TRAIN,
    MIN_TUNING_QUERIES,
    FaissStore,
    build_faiss_index,
    choose_index,
    index_bytes,
    index_factory_string,
    pq_subquantizers,
    recall_at_k,
    rerank_depth,
    resolve_index_kind,
    tune_nprobe,
)
from .milvus_store import GENERATION_PROPERTY, LEGACY_COLLECTION, MILVUS_TOKEN_ENV, MilvusStore, parse_milvus_uri

__all__ = [
    "COMPRESSED_RERANK",
    "EXACT_LIMIT",
    "GENERATION_PROPERTY",
    "INDEX_HELP",
    "INDEX_KINDS",
    "IVF_MIN_TRAIN",
    "LEGACY_COLLECTION",
    "MILVUS_TOKEN_ENV",
    "MIN_TUNING_QUERIES",
    "FaissStore",
    "MilvusStore",
    "StoreError",
    "VectorStore",
    "build_faiss_index",
    "choose_index",
    "index_bytes",
    "index_factory_string",
    "open_store",
    "parse_milvus_uri",
    "pq_subquantizers",
    "recall_at_k",
    "rerank_depth",
    "resolve_index_kind",
    "tune_nprobe",
]


def open_store(
    spec: str, gallery_dir: Path, dim: int, index: str = "auto", collection: str = LEGACY_COLLECTION
) -> VectorStore:
    """``faiss``, ``milvus://./gallery.db`` (Milvus Lite) or ``milvus://host:19530[?db=NAME]``.

    ``index`` is the FAISS index family (:data:`INDEX_KINDS`); Milvus chooses its own, and keeps
    the gallery in ``collection``.
    """
    if spec == "faiss":
        return FaissStore(gallery_dir / "faiss", dim, index)
    if spec.startswith("milvus://"):
        uri = spec[len("milvus://") :]
        if not uri:
            raise StoreError("milvus store needs a target: milvus://./gallery.db or milvus://host:19530")
        return MilvusStore(uri, dim, gallery_dir, collection)
    raise StoreError(f"unknown store {spec!r}; use 'faiss', 'milvus://./gallery.db' or 'milvus://host:19530'")
