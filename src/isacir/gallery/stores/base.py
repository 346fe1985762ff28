"""The vector-store interface: what the gallery asks of FAISS or Milvus.

The gallery's SQLite database is the source of truth for vectors; a store is a derived search
structure kept in step through the gallery's change log (see :mod:`isacir.gallery.changelog`).
That makes every store update idempotent (upsert/delete by id), so a crash at any point is
repaired by replaying the log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ...errors import IsacirError


class StoreError(IsacirError):
    pass


class VectorStore(ABC):
    """Inner-product search over L2-normalised float32 vectors keyed by int64 ids."""

    dim: int
    #: Generation of the gallery change log this store reflects.
    generation: int = 0

    @abstractmethod
    def apply(
        self,
        upsert_ids: np.ndarray,
        upsert_vecs: np.ndarray,
        delete_ids: np.ndarray,
        generation: int,
        persist: bool = True,
        prepared: object = None,
    ) -> None:
        """Apply one batch of changes and remember ``generation`` (durably when ``persist``: only the
        holder of the gallery's writer lock persists; a reader catches up in memory). ``prepared``
        is :meth:`prepare`'s result for ``upsert_vecs``, computed outside the caller's lock."""

    def prepare(self, vecs: np.ndarray) -> object:
        """Work for adding ``vecs`` that can run before the exclusive section (default: none)."""
        return None

    @abstractmethod
    def rebuild(self, ids: np.ndarray, vecs: np.ndarray, generation: int, persist: bool = True) -> None:
        """Replace the whole content."""

    #: whether :meth:`persist` rewrites a large file (FAISS), so that it is done in checkpoints
    persist_is_costly: bool = False
    #: whether every process searches the same live data (a Milvus collection): then only the
    #: holder of the writer lock changes it, and a reader adopts the generation the writer reached
    shared: bool = False
    #: generation of the durable state this process last wrote or read
    persisted_generation: int = 0

    def disk_generation(self) -> int:
        """The generation that the store's durable state reflects (another process may have moved it)."""
        return self.generation

    def reload(self) -> None:  # noqa: B027  (stores with nothing local to reload need not)
        """Adopt the durable state another process wrote (called when it is newer than ours)."""

    def persist(self) -> None:  # noqa: B027  (stores that persist every change need not)
        """Make the current content durable with its generation (safe while searches run)."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None, widen: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])``; missing slots have id -1.

        ``ids`` restricts the search to those items (a metadata filter); ``widen`` asks an
        approximate index to look that many times further (more IVF lists) when a restricted
        search came back short."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def describe(self) -> dict: ...

    def ids(self) -> np.ndarray | None:
        """Every id the store holds, where the store can list them cheaply (None: it cannot)."""
        return None

    def close(self) -> None:  # noqa: B027  (optional hook: stores without resources need not close)
        return None


# ----- FAISS ----------------------------------------------------------------------------------------
#: Below this many vectors exact search is fast enough (and has perfect recall).
