"""Tuning the index on real queries: a reservoir of composed query vectors, nprobe retuning, and
switching or rebuilding the index family."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import numpy as np

from .._fs import atomic_write_bytes, atomic_write_text
from .items import (
    GalleryError,
)
from .stores import FaissStore

if TYPE_CHECKING:
    pass


class Tuning:
    """Real query vectors and the index they tune."""

    def note_query(self, vec: np.ndarray) -> None:
        """Remember a real query vector (reservoir sampling), so that the next IVF build or
        :meth:`retune` sets ``nprobe`` for the searches this gallery really gets: composed,
        text-side queries sit far from every stored vector, unlike "more like this item"."""
        vec = np.asarray(vec, np.float32).reshape(-1)
        if vec.shape[0] != self.info["embed_dim"] or not np.all(np.isfinite(vec)):
            return
        with self._queries_lock:
            if self._queries is None:
                self._queries = self._saved_queries()
                self._queries_seen = len(self._queries)
            self._queries_seen += 1
            if len(self._queries) < self.TUNING_QUERIES:
                self._queries = np.concatenate([self._queries, vec[None]])
            else:
                slot = int(np.random.default_rng().integers(0, self._queries_seen))
                if slot >= self.TUNING_QUERIES:
                    return
                self._queries[slot] = vec
            self._queries_dirty = True

    def tuning_queries(self) -> np.ndarray:
        """The kept query vectors (``[m, dim]``, maybe empty)."""
        with self._queries_lock:
            if self._queries is not None:
                return self._queries.copy()
        return self._saved_queries()

    def _saved_queries(self) -> np.ndarray:
        try:
            kept = np.load(self.dir / "tuning-queries.npy", allow_pickle=False)
            if kept.ndim == 2 and kept.shape[1] == self.info["embed_dim"]:
                return kept.astype(np.float32)
        except (OSError, ValueError):
            pass
        return np.zeros((0, self.info["embed_dim"]), np.float32)

    def save_tuning_queries(self) -> None:
        with self._queries_lock:
            if not self._queries_dirty or self._queries is None:
                return
            buf = io.BytesIO()
            np.save(buf, self._queries, allow_pickle=False)
            self._queries_dirty = False
        atomic_write_bytes(self.dir / "tuning-queries.npy", buf.getvalue())

    def retune(self) -> dict:
        """Tune an IVF index's ``nprobe`` again on the kept real queries (no retraining), and
        persist it. Returns the index parameters."""
        store = self.store
        if not isinstance(store, FaissStore) or store.params["type"] == "flat":
            return dict(store.describe())
        with self.writing():
            ids, vecs = self.vectors()
            with self._catchup:
                with self._store_lock.exclusive():
                    store.tune(store.index, store.params, ids, vecs, self.tuning_queries())
                    store.persisted_generation = -1  # the parameters changed: the checkpoint writes them
                self._checkpoint(force=True)
        return dict(store.params)

    def set_index_kind(self, kind: str) -> dict | None:
        """Switch the FAISS index family (remembered in ``gallery.json``) and rebuild when the
        current index is not of it; returns the rebuild's report, or None when nothing changed."""
        from .stores import resolve_index_kind

        if not isinstance(self.store, FaissStore):
            raise GalleryError(f"--index applies to the faiss store; this gallery uses {self.info['store']!r}")
        resolve_index_kind(0, self.info["embed_dim"], kind)
        with self.writing():
            self.info["index"] = kind
            atomic_write_text(self.dir / "gallery.json", json.dumps(self.info, indent=2))
            self.store.kind = kind
            if self.store.needs_rebuild(self.count()) or self.store.params.get("requested", "auto") != kind:
                return self.rebuild_index()
        return None

    def rebuild_index(self) -> dict:
        """Rebuild the vector store from the database (the source of truth), under the writer lock."""
        with self.writing():
            gen = self.generation()
            if isinstance(self.store, FaissStore):
                self._rebuild_aside()  # searches go on with the old index while the new one trains
            else:
                ids, vecs = self.vectors()
                with self._catchup, self._store_lock.exclusive():
                    self.store.rebuild(ids, vecs, gen, persist=True)
            self._checkpoint(force=True)
            self._trim_log(gen)  # everything up to here is in the rebuilt index
        return {"items": self.count(), "generation": gen, "store": self.store.describe()}
