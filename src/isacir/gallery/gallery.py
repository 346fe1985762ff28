"""A gallery folder: metadata and vectors in SQLite (the truth), a vector store derived from it.

Layout of ``DIR``::

    gallery.json     foundation id + fingerprint, embedding dim, store spec
    meta.sqlite      items, vectors, change log (WAL mode)
    faiss/           index.faiss + index.json (FAISS backend)

Crash safety: each encoded batch is committed in one SQLite transaction together with its change-
log entries and a new generation number. The store records the generation it reflects; on open
and after indexing it replays newer log entries (upserts/deletes by id are idempotent). Killing
the indexer at any point therefore loses at most the uncommitted batch, which the next run redoes.
Ids are derived from the image path, so a rerun assigns the same ids and creates no duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._fs import atomic_write_text
from .._version import __version__
from ..errors import FoundationMismatchError, same_name_hint
from .catalogue import Catalogue
from .changelog import ChangeLog
from .home import GENERATIONS_FILE, GenerationLedger
from .ingest import Ingest
from .items import FILTER_EXACT_LIMIT, GALLERY_FORMAT, Filter, GalleryError, Hit, check_filter
from .locks import SharedLock
from .stores import LEGACY_COLLECTION, FaissStore, VectorStore, open_store
from .tuning import Tuning
from .verify import Verify

if TYPE_CHECKING:
    from ..foundation import Foundation

_log = logging.getLogger(__name__)


class Gallery(Catalogue, ChangeLog, Tuning, Ingest, Verify):
    """An indexed image collection bound to one foundation: one folder, opened with :meth:`open`.

    Its responsibilities live in one module each, as mixins over the state set up here: the
    SQLite catalogue (:mod:`.catalogue`), the writer lock and change log (:mod:`.changelog`),
    index tuning (:mod:`.tuning`), ingest (:mod:`.ingest`) and verify (:mod:`.verify`); this
    module opens and creates galleries and searches them.
    """

    def __init__(self, directory: str | os.PathLike, info: dict, store: VectorStore):
        self.dir = Path(directory)
        #: the gallery folder a user names: the same as ``dir``, or the folder whose serving
        #: generation this is (what is shared by every generation lives there: feedback, uploads, keys)
        self.home = self.dir
        #: the generation this is (see :mod:`isacir.gallery.generations`)
        self.generation_name: str = "main"
        self.info = info
        self.store = store
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._lock_depth = 0
        self._writer_thread: int | None = None
        self._lock_file: Any = None
        #: how a write waits for another process's (True), or fails at once (False, ``--no-wait``)
        self.wait_for_writer = True
        #: told once when a write waits for another process (the CLI prints it)
        self.on_wait: Callable[[str], None] | None = None
        # FAISS indexes must not be searched while they are modified: searches and persisting share
        # this lock, applying changes and swapping in a new index take it exclusively (briefly)
        self._store_lock = SharedLock()
        # one thread at a time brings the store up to the database
        self._catchup = threading.RLock()
        #: when the first change not yet persisted was applied (monotonic), or None
        self._dirty_since: float | None = None
        #: the generation persisted at the previous checkpoint: the change log is kept back to it,
        #: so a reader a little behind replays rather than reloads the whole index
        self._prev_checkpoint = store.persisted_generation
        self._wrote = False
        self._follower: threading.Thread | None = None
        # a reservoir sample of real query vectors (composed, text-side): what nprobe is tuned on
        self._queries: np.ndarray | None = None
        self._queries_seen = 0
        self._queries_dirty = False
        self._queries_lock = threading.Lock()
        self._stop_following = threading.Event()

    @classmethod
    def open(
        cls, directory: str | os.PathLike, generation: str | None = None, generation_root: bool = False
    ) -> Gallery:
        """The gallery at ``directory``: its serving generation, or ``generation`` by name
        (``generation_root``: the folder itself, whatever serves)."""
        home = Path(directory)
        if not generation_root and ((home / GENERATIONS_FILE).is_file() or generation is not None):
            gens = GenerationLedger(home)
            g = gens.get(generation) if generation is not None else gens.serving()
            if g["state"] == "retired":
                raise GalleryError(f"generation {g['name']!r} of {home} is retired; its vectors are gone")
            gallery = cls.open(home / g["path"], generation_root=True)
            gallery.home, gallery.generation_name = home, g["name"]
            return gallery
        return cls._open_folder(home)

    @classmethod
    def _open_folder(cls, directory: Path) -> Gallery:
        meta = directory / "gallery.json"
        if not meta.is_file():
            raise GalleryError(f"{directory} is not a gallery (no gallery.json); create one with `isacir index`")
        info = json.loads(meta.read_text())
        store = open_store(
            info["store"],
            directory,
            info["embed_dim"],
            info.get("index", "auto"),
            info.get("milvus_collection", LEGACY_COLLECTION),
        )
        gallery = cls(directory, info, store)
        gallery._ensure_schema()
        gallery._canonical_paths()
        gallery.sync()
        return gallery

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike, foundation: Foundation, store: str = "faiss", index: str | None = None
    ) -> Gallery:
        """Open the gallery at ``directory``, or create it for ``foundation``.

        ``index`` (a FAISS family, see :data:`isacir.gallery.stores.INDEX_KINDS`) is remembered in
        ``gallery.json``; None keeps an existing gallery's choice (``auto`` for a new one).
        """
        from .stores import resolve_index_kind

        directory = Path(directory)
        if index is not None:
            resolve_index_kind(0, foundation.embed_dim, index)  # reject a typo before creating anything
        if (directory / "gallery.json").is_file():
            gallery = cls.open(directory)
            gallery.check_foundation(foundation)
            if store != gallery.info["store"]:
                raise GalleryError(f"gallery {directory} uses store {gallery.info['store']!r}, not {store!r}")
            if index is not None and index != gallery.info.get("index", "auto"):
                gallery.set_index_kind(index)
            return gallery
        directory.mkdir(parents=True, exist_ok=True)
        info = {
            "format": GALLERY_FORMAT,
            "foundation_id": foundation.name,
            "foundation_fingerprint": foundation.fingerprint,
            "embed_dim": foundation.embed_dim,
            "store": store,
            "index": index or "auto",
            # a gallery's own Milvus collection: several galleries can share one Milvus server
            "milvus_collection": f"isacir_{uuid.uuid4().hex[:16]}",
            "created": time.time(),
            "isacir_version": __version__,
        }
        atomic_write_text(directory / "gallery.json", json.dumps(info, indent=2))
        return cls.open(directory)

    def check_foundation(self, foundation: Foundation | str) -> None:
        fp = foundation if isinstance(foundation, str) else foundation.fingerprint
        name = "<fingerprint>" if isinstance(foundation, str) else foundation.name
        if fp != self.info["foundation_fingerprint"]:
            raise FoundationMismatchError(
                f"gallery {self.dir} was indexed with {self.info['foundation_id']!r} (fingerprint "
                f"{self.info['foundation_fingerprint']}); refusing {name!r} (fingerprint {fp}). Its vectors "
                "live in another embedding space: use the same foundation, or index into a new gallery."
                + same_name_hint(self.info["foundation_id"], name)
            )

    #: a writer persists the FAISS index after this many changes (or a tenth of the gallery, if more) ...
    CHECKPOINT_CHANGES = 10_000
    #: ... or when its oldest change not yet persisted is this old (checked at its next write)
    CHECKPOINT_SECONDS = 60.0

    #: query vectors kept for tuning (a uniform sample of every query noted)
    TUNING_QUERIES = 1000

    def ids_matching(self, where: Filter) -> np.ndarray:
        """Ids of the items whose metadata passes the filter (:func:`check_filter`), ascending."""
        clauses, args = [], []
        for key, values in check_filter(where).items():
            clauses.append(f"json_extract(metadata, ?) IN ({','.join('?' * len(values))})")
            args += [f'$."{key}"', *values]
        q = f"SELECT id FROM items WHERE {' AND '.join(clauses)} ORDER BY id"
        return np.array([r[0] for r in self.db().execute(q, args)], dtype=np.int64)

    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None) -> list[list[Hit]]:
        """The top ``k`` items for each query; with ``where``, the top ``k`` of the items that pass
        it (exact over their stored vectors when few pass, else the store restricted to them)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.info["embed_dim"]:
            raise GalleryError(f"query dim {queries.shape[1]} != gallery dim {self.info['embed_dim']}")
        allowed = self.ids_matching(where) if where is not None else None
        if allowed is not None and len(allowed) <= FILTER_EXACT_LIMIT:
            return [self._exact_among(q, k, allowed) for q in queries]
        if self._follower is None and self.generation() != self.store.generation:
            self._catch_up()  # a change by another process
        with self._store_lock.shared():
            scores, ids = self.store.search(queries, k, ids=allowed)
            want = min(k, len(allowed)) if allowed is not None else 0
            widen = 8
            while allowed is not None and widen <= 512 and ((ids >= 0).sum(1) < want).any():
                # an IVF search restricted to few items can probe lists that hold none of them
                scores, ids = self.store.search(queries, k, ids=allowed, widen=widen)
                widen *= 8
        return [self._hits(s, i) for s, i in zip(scores, ids, strict=True)]

    def _exact_among(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[Hit]:
        ids, vecs = self.vectors(allowed)
        if not len(ids):
            return []
        scores = vecs @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return self._hits(scores[top], ids[top])

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        valid = [(float(s), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0]
        if not valid:
            return []
        db = self.db()
        q = f"SELECT id, path, metadata FROM items WHERE id IN ({','.join('?' * len(valid))})"
        info = {r[0]: (r[1], json.loads(r[2] or "{}")) for r in db.execute(q, [i for _, i in valid])}
        # an id missing here was removed between the store search and this lookup: drop it
        return [Hit(i, info[i][0], s, info[i][1]) for s, i in valid if i in info]

    def rescore(self, hits: list[Hit], query: np.ndarray) -> list[Hit]:
        """Re-score hits with the stored full-precision vectors (an approximate store's scores are
        not the exact inner products) and sort them by it; a hit removed meanwhile drops out."""
        ids, vecs = self.vectors([h.id for h in hits])
        exact = dict(zip(ids.tolist(), (vecs @ np.asarray(query, np.float32).reshape(-1)).tolist(), strict=True))
        kept = [h for h in hits if h.id in exact]
        for h in kept:
            h.score = float(exact[h.id])
        return sorted(kept, key=lambda h: -h.score)

    @property
    def store_is_exact(self) -> bool:
        """Whether the store's scores are exact inner products of the stored vectors (flat FAISS,
        Milvus FLAT), so that exact re-scoring would only repeat them."""
        if isinstance(self.store, FaissStore):
            return self.store.params.get("type") == "flat"
        return self.store.describe().get("index") == "FLAT"

    def describe(self) -> dict:
        return {
            **self.info,
            "count": self.count(),
            "generation": self.generation(),
            "store_state": self.store.describe(),
        }

    def close(self) -> None:
        """Persist what this process changed (when no other process is writing: otherwise the
        change log keeps it), then release the store and the database."""
        if self._follower is not None:
            self._stop_following.set()
            self._follower.join()
            self._follower = None
        with contextlib.suppress(OSError):
            self.save_tuning_queries()
        store = self.store
        if self._wrote and store.persist_is_costly and store.generation != store.persisted_generation:
            wait, self.wait_for_writer = self.wait_for_writer, False
            try:
                self.checkpoint()
            except GalleryError:
                pass  # another process holds the writer lock; the change log is durable
            finally:
                self.wait_for_writer = wait
        self.store.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
