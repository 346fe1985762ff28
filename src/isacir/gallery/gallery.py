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
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._fs import atomic_write_bytes, atomic_write_text
from .._version import __version__
from ..data import DecodeDataset, ImageRecord, collate_list, discover_images
from ..data.imageio import IMAGE_EXTENSIONS
from ..errors import FoundationMismatchError, IsacirError, same_name_hint
from .home import GENERATIONS_FILE, GenerationLedger
from .locks import SharedLock
from .stores import LEGACY_COLLECTION, FaissStore, VectorStore, open_store

if TYPE_CHECKING:
    from ..foundation import Foundation

_log = logging.getLogger(__name__)

GALLERY_FORMAT = 1
GALLERY_EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS))


class GalleryError(IsacirError):
    pass


#: a metadata filter: field -> value, or -> list of accepted values (fields are ANDed)
Filter = dict[str, Any]
FILTER_MAX_FIELDS = 16
FILTER_MAX_VALUES = 100
#: scheduling priority of the follower thread (Linux niceness applies per thread)
FOLLOWER_NICE = 10
#: a filter passing at most this many items is searched exactly over their stored vectors
FILTER_EXACT_LIMIT = 4096
#: a filter field's name: 1 to 64 characters, no quote, backslash or control character
FILTER_FIELD = r'^[^"\\\x00-\x1f\x7f]{1,64}$'


def check_filter(where: Any) -> dict[str, list]:
    """Validate a metadata filter; returns field -> accepted values. Why strict: a typo'd filter
    that silently matched nothing (or everything) would look like a retrieval failure."""
    if not isinstance(where, dict):
        raise GalleryError('a filter is a JSON object of field -> value, e.g. {"category": "shoes"}')
    if not 1 <= len(where) <= FILTER_MAX_FIELDS:
        raise GalleryError(f"a filter names 1 to {FILTER_MAX_FIELDS} fields, not {len(where)}")
    out: dict[str, list] = {}
    for key, value in where.items():
        if not isinstance(key, str) or not re.fullmatch(FILTER_FIELD, key):
            raise GalleryError(
                f"filter field {key!r}: 1 to 64 characters, no quotes, backslashes or control characters"
            )
        values = value if isinstance(value, list) else [value]
        if not 1 <= len(values) <= FILTER_MAX_VALUES:
            raise GalleryError(f"filter field {key!r}: 1 to {FILTER_MAX_VALUES} accepted values")
        for v in values:
            if not isinstance(v, (str, int, float)) or (isinstance(v, float) and not np.isfinite(v)):
                raise GalleryError(f"filter field {key!r}: values are strings, numbers or booleans, not {v!r}")
        out[key] = values
    return out


def item_id(key: str) -> int:
    """Stable id of an image location (path, or shard::member).

    53 bits, so ids survive JSON in browsers (JavaScript numbers are exact up to 2**53).
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 11


def _holding_writer_lock(method: Callable) -> Callable:
    """Run a :class:`Gallery` method under the gallery's writer lock (see :meth:`Gallery.writing`)."""

    @functools.wraps(method)
    def locked(self: Gallery, *args: Any, **kwargs: Any) -> Any:
        with self.writing():
            return method(self, *args, **kwargs)

    return locked


@dataclass
class IndexReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    #: files left out because an operator removed them (``--restore`` brings them back)
    tombstoned: int = 0
    restored: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "scanned": self.scanned,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "tombstoned": self.tombstoned,
            "restored": self.restored,
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "skipped_files": self.skipped,
            "ignored_files": len(self.ignored),
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images_per_s, 2),
        }

    def summary(self) -> str:
        skipped = sum(len(v) for v in self.skipped.values())
        why = ", ".join(f"{k}: {len(v)}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.scanned} images scanned: {self.added} added, {self.updated} re-embedded, "
            f"{self.unchanged} unchanged, {self.removed} removed, "
            + (f"{self.tombstoned} left out (removed by an operator; --restore), " if self.tombstoned else "")
            + (f"{self.restored} restored, " if self.restored else "")
            + f"{skipped} skipped ({why}), "
            f"{len(self.ignored)} other files ignored; {self.seconds:.1f}s ({self.images_per_s:.1f} img/s encoded)"
        )


@dataclass
class Hit:
    id: int
    path: str
    score: float
    metadata: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6), "metadata": self.metadata}


class Gallery:
    """An indexed image collection bound to one foundation."""

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

    # ----- open / create ----------------------------------------------------------------------------
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

    # ----- SQLite -----------------------------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        """One connection per thread (SQLite connections must not be shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.dir / "meta.sqlite", timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def _ensure_schema(self) -> None:
        db = self.db()
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, hash TEXT, "
                "size INTEGER, mtime_ns INTEGER, added REAL, metadata TEXT)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS changes (generation INTEGER, id INTEGER, op TEXT)")
            db.execute("CREATE INDEX IF NOT EXISTS changes_gen ON changes (generation)")
            db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER)")
            # items an operator removed: re-indexing their folder must not bring them back
            db.execute("CREATE TABLE IF NOT EXISTS tombstones (path TEXT PRIMARY KEY, id INTEGER, removed REAL)")
            db.execute("INSERT OR IGNORE INTO state VALUES ('generation', 0)")
            # the change log holds every change after this generation (older ones were trimmed; a
            # gallery from before this row existed was trimmed up to its persisted index at most)
            db.execute("INSERT OR IGNORE INTO state VALUES ('log_floor', ?)", (self.store.disk_generation(),))

    def _canonical_paths(self) -> None:
        """Galleries written before paths were canonical stored them as typed (often relative).

        Each such path that still names a file from here is rewritten to its canonical form; the
        item keeps its id and vector. One that names nothing is left alone: ``verify`` reports it.
        """
        from ..data.sources import content_hash

        db = self.db()
        if db.execute("SELECT value FROM state WHERE key='paths_canonical'").fetchone():
            return  # migrated before (or created canonical): no scan of every item on every open
        rows = db.execute("SELECT id, path, hash FROM items").fetchall()
        moves: list[tuple[str, int]] = []
        unresolved = 0
        for item, key, digest in rows:
            path, sep, member = key.partition("::")
            real = os.path.realpath(path)
            if real == path:
                continue
            if not os.path.isfile(real):
                unresolved += not os.path.isabs(path)  # relative to a folder this process is not in
                continue
            # the same file, not another one that happens to have that name from this folder
            if sep or digest is None or content_hash(Path(real).read_bytes()) == digest:
                moves.append((real + sep + member, item))
            else:
                unresolved += 1
        taken = {r[1] for r in rows}
        with db:
            for new, item in moves:
                if new not in taken:  # a second spelling of an indexed file stays as it was
                    db.execute("UPDATE items SET path = ? WHERE id = ?", (new, item))
                    taken.add(new)
            if not unresolved:  # an open from the indexing folder may still resolve the others
                db.execute("INSERT OR REPLACE INTO state VALUES ('paths_canonical', 1)")

    def generation(self) -> int:
        return int(self.db().execute("SELECT value FROM state WHERE key='generation'").fetchone()[0])

    def count(self) -> int:
        return int(self.db().execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def ids(self) -> np.ndarray:
        """Every indexed id, ascending (cheap: no vectors, no paths)."""
        return np.array([r[0] for r in self.db().execute("SELECT id FROM vectors ORDER BY id")], dtype=np.int64)

    def items(self) -> list[dict]:
        rows = self.db().execute("SELECT id, path, hash, size, metadata FROM items ORDER BY id").fetchall()
        return [
            {"id": r[0], "path": r[1], "hash": r[2], "size": r[3], "metadata": json.loads(r[4] or "{}")} for r in rows
        ]

    def path_of(self, item_id: int) -> str | None:
        row = self.db().execute("SELECT path FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return row[0] if row else None

    def ids_with_hash(self, digest: str) -> list[int]:
        """Items whose file content has this hash (:func:`isacir.data.sources.content_hash`)."""
        return [r[0] for r in self.db().execute("SELECT id FROM items WHERE hash = ? ORDER BY id", (digest,))]

    def hashes_of(self, ids: Sequence[int]) -> dict[int, str | None]:
        """Content hashes of these items (absent ids are left out)."""
        out: dict[int, str | None] = {}
        for start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[start : start + 900]]
            q = f"SELECT id, hash FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            out.update(dict(self.db().execute(q, chunk).fetchall()))
        return out

    def hash_of(self, item_id: int) -> str | None:
        row = self.db().execute("SELECT hash FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return row[0] if row else None

    def ids_for_paths(self, paths: Sequence[str]) -> dict[str, int]:
        """Gallery ids of indexed paths (paths not in the gallery are absent)."""
        out: dict[str, int] = {}
        db = self.db()
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            q = f"SELECT path, id FROM items WHERE path IN ({','.join('?' * len(chunk))})"
            out.update(dict(db.execute(q, chunk).fetchall()))
        return out

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` from the source of truth (all, or the given ids in that order)."""
        db = self.db()
        if ids is None:
            rows = db.execute("SELECT id, vec FROM vectors ORDER BY id").fetchall()
        else:
            found = {}
            for start in range(0, len(ids), 900):
                chunk = [int(i) for i in ids[start : start + 900]]
                q = f"SELECT id, vec FROM vectors WHERE id IN ({','.join('?' * len(chunk))})"
                found.update(dict(db.execute(q, chunk).fetchall()))
            rows = [(int(i), found[int(i)]) for i in ids if int(i) in found]
        dim = self.info["embed_dim"]
        out_ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            if rows
            else np.zeros((0, dim), np.float32)
        )
        return out_ids, vecs

    def _commit_batch(self, rows: list[tuple], vecs: np.ndarray) -> None:
        """Upsert items + vectors and log the change, all in one transaction."""
        db = self.db()
        self._wrote = True
        with db:
            gen = self.generation() + 1
            db.executemany(
                "INSERT INTO items (id, path, hash, size, mtime_ns, added, metadata) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET hash=excluded.hash, size=excluded.size, mtime_ns=excluded.mtime_ns, "
                "metadata=excluded.metadata",
                rows,
            )
            db.executemany(
                "INSERT OR REPLACE INTO vectors (id, vec) VALUES (?, ?)",
                [(r[0], vecs[j].astype(np.float32).tobytes()) for j, r in enumerate(rows)],
            )
            db.executemany("INSERT INTO changes VALUES (?, ?, 'u')", [(gen, r[0]) for r in rows])
            db.execute("UPDATE state SET value=? WHERE key='generation'", (gen,))

    def add_vectors(
        self,
        keys: Sequence[str],
        vecs: np.ndarray,
        metadata: Sequence[dict] | None = None,
        hashes: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add (or replace) items whose image vectors were computed elsewhere; returns their ids.

        ``keys`` name the items as ``index`` would (a path, ``shard::member`` or any unique string).
        The vectors must come from this gallery's foundation, L2-normalised: that is the caller's
        promise, checked here only for shape, finiteness and norm.
        """
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(keys), self.info["embed_dim"]):
            raise GalleryError(f"expected {len(keys)} vectors of dim {self.info['embed_dim']}, got {vecs.shape}")
        norms = np.linalg.norm(vecs, axis=1)
        if not np.all(np.isfinite(vecs)) or np.any(np.abs(norms - 1) > 1e-3):
            raise GalleryError("vectors must be finite and L2-normalised")
        if len(set(keys)) != len(keys):
            raise GalleryError("keys must be unique")
        metadata = list(metadata) if metadata is not None else [{}] * len(keys)
        hashes = list(hashes) if hashes is not None else [None] * len(keys)
        if len(metadata) != len(keys) or len(hashes) != len(keys):
            raise GalleryError("metadata and hashes need one entry per key")
        with self.writing():
            ids = [self._free_id(k) for k in keys]
            now = time.time()
            rows = [
                (i, k, h, None, None, now, json.dumps(m))
                for i, k, h, m in zip(ids, keys, hashes, metadata, strict=True)
            ]
            for start in range(0, len(rows), 5000):
                self._commit_batch(rows[start : start + 5000], vecs[start : start + 5000])
            self.sync()
        return ids

    def remove(self, ids: Iterable[int], tombstone: bool = True) -> int:
        """Remove entries by id; returns how many existed.

        ``tombstone`` (an operator's removal): the file stays out of later ``index`` runs of its
        folder until restored. Pruning files that are gone from disk leaves none, so a file that
        comes back is indexed again.
        """
        ids = [int(i) for i in ids]
        with self.writing():
            db = self.db()
            with db:
                found = {i: db.execute("SELECT path FROM items WHERE id=?", (i,)).fetchone() for i in ids}
                present = [i for i, row in found.items() if row]
                if present and tombstone:
                    db.executemany(
                        "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)",
                        [(found[i][0], i, time.time()) for i in present],
                    )
                if present:
                    self._wrote = True
                    gen = self.generation() + 1
                    db.executemany("DELETE FROM items WHERE id=?", [(i,) for i in present])
                    db.executemany("DELETE FROM vectors WHERE id=?", [(i,) for i in present])
                    db.executemany("INSERT INTO changes VALUES (?, ?, 'd')", [(gen, i) for i in present])
                    db.execute("UPDATE state SET value=? WHERE key='generation'", (gen,))
            self.sync()
        return len(present)

    # ----- one writer at a time ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the gallery's writer lock: threads of this process and other processes take turns.

        An OS lock on ``GALLERY/.write.lock``: ``isacir index``, ``isacir gallery rm`` and the
        service's uploads and deletes each hold it while they change the gallery, so no process
        ever writes a vector store older than what another process made durable. Re-entrant.
        """
        with self._write_lock:
            if self._lock_depth == 0:
                self._acquire_file_lock()
            self._lock_depth += 1
            try:
                if self._lock_depth == 1:
                    self._writer_thread = threading.get_ident()
                    self.sync(checkpoint=False)  # start from what other writers made durable
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self._writer_thread = None
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _acquire_file_lock(self) -> None:
        if self._lock_file is None:
            self._lock_file = open(self.dir / ".write.lock", "a+")  # noqa: SIM115  (held for the gallery's life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            if not self.wait_for_writer:
                raise GalleryError(f"{self.dir} is being changed by {holder}; try again later (or wait)") from None
            if self.on_wait is not None:
                self.on_wait(f"waiting for {holder} to finish changing {self.dir} ...")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:200]})")
        self._lock_file.flush()

    # ----- keeping the store in step ----------------------------------------------------------------
    #: a writer persists the FAISS index after this many changes (or a tenth of the gallery, if more) ...
    CHECKPOINT_CHANGES = 10_000
    #: ... or when its oldest change not yet persisted is this old (checked at its next write)
    CHECKPOINT_SECONDS = 60.0

    def sync(self, checkpoint: bool | None = None) -> None:
        """Bring the store up to the database: adopt what another process persisted, replay the rest.

        Only the holder of the writer lock rebuilds and persists the store and trims the change log;
        anyone else catches up in memory, so a reader never overwrites a writer's newer index. A
        FAISS index is one large file, so a writer persists it in checkpoints (``checkpoint``: True
        forces one, False skips it, None when due); until then the change log, committed with every
        change, is what makes the change durable. Heavy work (reading another process's index,
        training a new IVF index, writing a checkpoint) runs while searches go on with the live index;
        only applying a batch and swapping an index are exclusive.
        """
        self._catch_up()
        if self._writer_thread == threading.get_ident():
            store = self.store
            if isinstance(store, FaissStore) and store.needs_rebuild(self.count()):
                self._rebuild_aside()
            if checkpoint is not False:
                self._checkpoint(force=bool(checkpoint))

    def follow(self, interval: float = 0.02) -> None:
        """Keep the store up with other processes' changes from a background thread, so that
        searches never replay changes themselves (for a long-running reader: the service).

        Another process's change becomes searchable within about ``interval`` plus its replay;
        this process's own writes are applied before the write returns. Without a follower each
        search that finds the database ahead of the store catches up first.
        """
        if self._follower is not None:
            return

        def loop() -> None:
            with contextlib.suppress(OSError):  # background work: searches get the CPU first
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FOLLOWER_NICE)
            while not self._stop_following.wait(interval):
                try:
                    if self.generation() != self.store.generation:
                        self._catch_up()
                except Exception as exc:  # noqa: BLE001 - a busy database or a half-written file: next round
                    _log.warning("gallery %s: catching up failed (%s); retrying", self.dir, exc)

        self._follower = threading.Thread(target=loop, name="gallery-follower", daemon=True)
        self._follower.start()

    def checkpoint(self) -> None:
        """Persist the vector store now and trim the change log (under the writer lock)."""
        with self.writing():
            self.sync(checkpoint=True)

    def _catch_up(self) -> None:
        with self._catchup:
            store = self.store
            if store.shared and self._writer_thread != threading.get_ident():
                # a reader must not write the shared store (it could undo a newer write); the writer
                # applies every batch there at once, so adopting its generation is catching up
                with self._store_lock.exclusive():
                    store.reload()
                return
            disk_gen = store.disk_generation()
            behind = disk_gen > store.generation and not self._log_reaches(store)
            if behind or self._disk_rebuilt(store, disk_gen):
                self._adopt_disk()  # another process persisted an index that our log cannot reach, or a new build
            gen = self.generation()
            if store.generation == gen:
                return
            if store.generation > gen:  # the database went back (restored from a backup): rebuild from it
                ids, vecs = self.vectors()
                with self._store_lock.exclusive():
                    store.rebuild(ids, vecs, gen, persist=self._writer_thread == threading.get_ident())
                return
            self._replay(gen)

    def _log_reaches(self, store: VectorStore) -> bool:
        """Whether replaying the change log brings ``store`` up to date (rather than reloading)."""
        return store.generation >= self._log_floor()

    def _log_floor(self) -> int:
        floor = self.db().execute("SELECT value FROM state WHERE key='log_floor'").fetchone()
        return int(floor[0]) if floor is not None else 0

    def _disk_rebuilt(self, store: VectorStore, disk_gen: int) -> bool:
        """Whether the persisted index is another build than the live one (a writer rebuilt or
        retuned it): a reader adopts it whole, then replays the log from its generation."""
        if not isinstance(store, FaissStore):
            return False
        disk = store.disk_params()
        keys = ("type", "built_for", "nprobe")
        return bool(disk) and any(disk.get(k) != store.params.get(k) for k in keys) and disk_gen >= self._log_floor()

    def _adopt_disk(self) -> None:
        store = self.store
        if isinstance(store, FaissStore):
            loaded = store.read_disk()  # aside: searches keep using the live index meanwhile
            if loaded is not None:
                with self._store_lock.exclusive():
                    store.adopt(*loaded)
                    self._dirty_since = None
        else:
            with self._store_lock.exclusive():
                store.reload()

    def _replay(self, gen: int) -> None:
        """Apply the change log after the store's generation, in memory. The caller holds
        ``_catchup`` (so the index is not swapped meanwhile); reading the changes and encoding them
        happen before the exclusive section, which is left with the insert itself."""
        store = self.store
        rows = (
            self.db()
            .execute(
                "SELECT id, op, MAX(generation) FROM changes WHERE generation > ? GROUP BY id", (store.generation,)
            )
            .fetchall()
        )
        live = [r[0] for r in rows if r[1] == "u"]
        dead = np.array([r[0] for r in rows if r[1] == "d"], dtype=np.int64)
        up_ids, up_vecs = self.vectors(live)
        gone = np.setdiff1d(np.array(live, dtype=np.int64), up_ids)  # upserted, then deleted
        prepared = store.prepare(up_vecs)
        with self._store_lock.exclusive():
            if store.generation == store.persisted_generation:
                self._dirty_since = time.monotonic()
            store.apply(up_ids, up_vecs, np.concatenate([dead, gone]), gen, persist=False, prepared=prepared)

    # ----- real queries, for tuning ------------------------------------------------------------------
    #: query vectors kept for tuning (a uniform sample of every query noted)
    TUNING_QUERIES = 1000

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

    def _rebuild_aside(self) -> None:
        """Train and fill a new index from a snapshot of the database, then swap it in. The writer
        lock is held, so the snapshot stays current; searches use the old index until the swap."""
        store = self.store
        assert isinstance(store, FaissStore)
        gen = self.generation()
        ids, vecs = self.vectors()
        index, params = store.build(ids, vecs, self.tuning_queries())
        with self._catchup:  # until persisted, no other thread may take the older file for news
            with self._store_lock.exclusive():
                store.adopt(index, params, gen, persisted=False)
                self._replay(self.generation())
            self._checkpoint(force=True)  # a new index family is worth persisting at once

    def _checkpoint(self, force: bool) -> None:
        store = self.store
        if store.generation == store.persisted_generation:
            return
        if not force and store.persist_is_costly:
            pending = (
                self.db()
                .execute("SELECT COUNT(*) FROM changes WHERE generation > ?", (store.persisted_generation,))
                .fetchone()[0]
            )
            old = self._dirty_since is not None and time.monotonic() - self._dirty_since >= self.CHECKPOINT_SECONDS
            if pending < max(self.CHECKPOINT_CHANGES, self.count() // 10) and not old:
                return
        with self._store_lock.shared():  # searches share it: they go on while the file is written
            store.persist()
        self._dirty_since = None
        self._trim_log(min(self._prev_checkpoint, store.persisted_generation))
        self._prev_checkpoint = store.persisted_generation

    def _trim_log(self, upto: int) -> None:
        """Drop the change log up to generation ``upto`` and record that it starts after it."""
        with self.db() as db:
            db.execute("DELETE FROM changes WHERE generation <= ?", (upto,))
            db.execute("UPDATE state SET value = MAX(value, ?) WHERE key = 'log_floor'", (upto,))

    # ----- indexing ---------------------------------------------------------------------------------
    def tombstones(self) -> list[dict]:
        rows = self.db().execute("SELECT id, path, removed FROM tombstones ORDER BY removed").fetchall()
        return [{"id": r[0], "path": r[1], "removed": r[2]} for r in rows]

    def restore(self, ids: Iterable[int] | None = None) -> list[str]:
        """Forget the tombstones of these removed ids (all when None); returns their paths, which
        the next ``index`` of their folder adds again."""
        with self.writing(), self.db() as db:
            if ids is None:
                paths = [r[0] for r in db.execute("SELECT path FROM tombstones")]
                db.execute("DELETE FROM tombstones")
            else:
                paths = []
                for i in ids:
                    row = db.execute("SELECT path FROM tombstones WHERE id = ?", (int(i),)).fetchone()
                    if row is None:
                        raise GalleryError(f"no removed item {i} to restore (`isacir gallery ls-removed` lists them)")
                    paths.append(row[0])
                db.executemany("DELETE FROM tombstones WHERE path = ?", [(p,) for p in paths])
        return paths

    def _restore_under(self, sources: Sequence[str | os.PathLike]) -> int:
        """``index --restore``: forget the tombstones of files under these sources."""
        roots = [os.path.realpath(s) for s in sources]
        with self.db() as db:
            paths = [r[0] for r in db.execute("SELECT path FROM tombstones") if _under(r[0], roots)]
            db.executemany("DELETE FROM tombstones WHERE path = ?", [(p,) for p in paths])
        return len(paths)

    @_holding_writer_lock
    def index(
        self,
        sources: Sequence[str | os.PathLike],
        foundation: Foundation,
        prune: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        metadata: dict | None = None,
        progress: bool = True,
        encoder=None,
        restore: bool = False,
        metadata_by_path: dict[str, dict] | None = None,
        checkpoint: bool | None = None,
    ) -> IndexReport:
        """Add new images, re-embed changed ones, optionally prune deleted ones.

        ``checkpoint``: persist the vector store at the end (True: a batch job leaves a compact
        gallery), or when a checkpoint is due (None: uploads to a service).

        ``metadata_by_path`` (canonical path -> object, e.g. from a JSON Lines file) wins over
        ``metadata`` for the files it names, and also updates items whose image did not change.
        Files an operator removed (``remove``, ``gallery rm``, ``DELETE /v1/gallery/{id}``) stay
        out unless ``restore``.

        ``encoder`` (records -> batches of (index, hash, vector)) replaces local encoding, e.g.
        with the Ray path; by default images are decoded in DataLoader workers and encoded here.
        """
        from ..progress import progress_bar

        self.check_foundation(foundation)
        by_path = metadata_by_path or {}
        t0 = time.perf_counter()
        report = IndexReport()
        records = discover_images(sources, extensions=GALLERY_EXTENSIONS, ignored=report.ignored, canonical=True)
        report.scanned = len(records)
        db = self.db()
        if restore:
            report.restored = self._restore_under(sources)
        dead = {r[0] for r in db.execute("SELECT path FROM tombstones")}
        if dead:
            kept = [r for r in records if r.key not in dead]
            report.tombstoned = len(records) - len(kept)
            records = kept
        known = {r[0]: (r[1], r[2], r[3], r[4]) for r in db.execute("SELECT path, id, hash, size, mtime_ns FROM items")}
        todo: list[ImageRecord] = []
        stats: list[tuple[int, int]] = []
        seen_paths: set[str] = set()
        for rec in records:
            key = rec.key
            seen_paths.add(key)
            size, mtime = _stat(rec)
            old = known.get(key)
            if old is not None and old[2] == size and old[3] == mtime:
                report.unchanged += 1
                continue
            todo.append(rec)
            stats.append((size, mtime))
        meta_json = json.dumps(metadata or {})
        encoded = 0
        t_enc = time.perf_counter()
        batches = encoder(todo) if encoder is not None else encode_records(todo, foundation, batch_size, num_workers)
        bar = progress_bar(total=len(todo), desc="indexing", unit="img", disable=not progress, leave=False)
        for batch in batches:
            rows, vecs = [], []
            for i, digest, vec, error in batch:
                rec = todo[i]
                if error:
                    reason, _, message = error.partition("|")
                    report.skipped.setdefault(reason, []).append(message)
                    continue
                old = known.get(rec.key)
                if old is not None and old[1] == digest:
                    # same content, new mtime (touched or copied): refresh stat, keep the vector
                    with db:
                        db.execute("UPDATE items SET size=?, mtime_ns=? WHERE id=?", (*stats[i], old[0]))
                    report.unchanged += 1
                    continue
                if old is not None:
                    report.updated += 1
                    new_id = old[0]
                else:
                    report.added += 1
                    new_id = self._free_id(rec.key)
                meta = json.dumps(by_path[rec.key]) if rec.key in by_path else meta_json
                rows.append((new_id, rec.key, digest, stats[i][0], stats[i][1], time.time(), meta))
                vecs.append(vec)
            if rows:
                with self._write_lock:
                    self._commit_batch(rows, np.stack(vecs))
                    self.sync()  # searches see the batch now; the index persists when a checkpoint is due
                encoded += len(rows)
            bar.update(len(batch))
        bar.close()
        if by_path:  # metadata needs no re-embedding: items whose image did not change get theirs too
            with self._write_lock, db:
                db.executemany(
                    "UPDATE items SET metadata = ? WHERE path = ?", [(json.dumps(m), k) for k, m in by_path.items()]
                )
        enc_seconds = time.perf_counter() - t_enc
        if prune:
            roots = [os.path.realpath(s) for s in sources]
            gone = [v[0] for k, v in known.items() if k not in seen_paths and _under(k, roots)]
            report.removed = self.remove(gone, tombstone=False) if gone else 0
        with self._write_lock:
            self.sync(checkpoint=checkpoint)
        report.seconds = time.perf_counter() - t0
        report.images_per_s = encoded / enc_seconds if encoded and enc_seconds > 0 else 0.0
        return report

    def _free_id(self, key: str) -> int:
        """The path's id, or (on a hash collision with another path) the next free one."""
        candidate = item_id(key)
        db = self.db()
        while True:
            row = db.execute("SELECT path FROM items WHERE id=?", (candidate,)).fetchone()
            if row is None or row[0] == key:
                return candidate
            candidate = (candidate + 1) % (1 << 53)

    # ----- generations ------------------------------------------------------------------------------
    @_holding_writer_lock
    def copy_items_from(
        self, source: Gallery, foundation: Foundation, batch_size: int = 32, progress: bool = True
    ) -> dict:
        """Hold exactly ``source``'s items (same ids, paths and metadata), with vectors of this
        gallery's ``foundation``: encode what is missing or changed, drop what ``source`` lacks.

        How a new generation is built and kept up to date (:class:`~.generations.Generations`).
        Items whose image cannot be read now are reported under ``failed`` and left out."""
        from ..progress import progress_bar

        self.check_foundation(foundation)
        wanted = {it["id"]: it for it in source.items()}
        mine = {it["id"]: it for it in self.items()}
        stale = [i for i in mine if i not in wanted]
        removed = self.remove(stale, tombstone=False) if stale else 0
        todo = [it for i, it in wanted.items() if i not in mine or mine[i]["hash"] != it["hash"]]
        meta = [
            (json.dumps(it["metadata"]), i)
            for i, it in wanted.items()
            if i in mine and mine[i]["hash"] == it["hash"] and mine[i]["metadata"] != it["metadata"]
        ]
        if meta:
            with self._write_lock, self.db() as db:
                db.executemany("UPDATE items SET metadata = ? WHERE id = ?", meta)
        records = _records_for_keys([it["path"] for it in todo])
        failed: dict[str, list[str]] = {}
        encoded = 0
        bar = progress_bar(total=len(todo), desc=f"generation {self.generation_name}", unit="img", disable=not progress)
        usable = [j for j, r in enumerate(records) if r is not None]
        for j, r in enumerate(records):
            if r is None:
                failed.setdefault("missing", []).append(todo[j]["path"])
        for batch in encode_records([records[j] for j in usable], foundation, batch_size):  # type: ignore[misc]
            rows, vecs = [], []
            for i, digest, vec, error in batch:
                it = todo[usable[i]]
                if error:
                    reason, _, message = error.partition("|")
                    failed.setdefault(reason, []).append(message)
                    continue
                size, mtime = _stat(records[usable[i]])  # type: ignore[arg-type]
                rows.append((it["id"], it["path"], digest, size, mtime, time.time(), json.dumps(it["metadata"])))
                vecs.append(vec)
            if rows:
                with self._write_lock:
                    self._commit_batch(rows, np.stack(vecs))
                    self.sync()
                encoded += len(rows)
            bar.update(len(batch))
        bar.update(len(todo) - len(usable))
        bar.close()
        with self._write_lock:
            self.sync(checkpoint=True)
        return {
            "items": self.count(),
            "source_items": len(wanted),
            "encoded": encoded,
            "removed": removed,
            "metadata_updated": len(meta),
            "unchanged": len(wanted) - len(todo) - len(meta),
            "failed": {k: len(v) for k, v in failed.items()},
            "failed_examples": {k: v[:5] for k, v in failed.items()},
        }

    def drop_vectors(self) -> int:
        """Remove every item and vector of this folder and compact it; returns the bytes freed.

        For a retired generation: its items live on in the serving generation."""
        before = _folder_bytes(self.dir)
        with self.writing():
            ids = [int(i) for i in self.ids()]
            if ids:
                self.remove(ids, tombstone=False)
            self.rebuild_index()
        self.db().execute("VACUUM")
        return max(0, before - _folder_bytes(self.dir))

    # ----- search -----------------------------------------------------------------------------------
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

    def verify(self, sample: int | None = None, seed: int = 0) -> dict:
        """Check that the database and the vector store agree; returns a report (``ok`` is the verdict).

        Problems (``ok`` false): a failed SQLite integrity check; items without a vector or vectors
        without an item; a store whose count or generation differs from the database's; an item
        that its own stored vector does not find (a store that lost or never received it).
        Warnings: indexed files that are gone from disk; identical files under several paths.
        ``sample`` checks self-retrieval on that many random items instead of all of them.
        """
        db = self.db()
        problems: list[str] = []
        warnings: list[str] = []
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"SQLite integrity check: {integrity}")
        item_ids = {r[0] for r in db.execute("SELECT id FROM items")}
        vec_ids = {r[0] for r in db.execute("SELECT id FROM vectors")}
        if item_ids - vec_ids:
            problems.append(
                f"{len(item_ids - vec_ids)} item(s) without a vector, e.g. {sorted(item_ids - vec_ids)[:5]}"
            )
        if vec_ids - item_ids:
            problems.append(
                f"{len(vec_ids - item_ids)} vector(s) without an item, e.g. {sorted(vec_ids - item_ids)[:5]}"
            )
        with self._store_lock.shared():
            store_count, store_gen, gen = self.store.count(), self.store.generation, self.generation()
            listed = self.store.ids()
        if store_gen != gen:
            problems.append(f"the vector store is at generation {store_gen}, the database at {gen}")
        if store_count != len(item_ids):
            problems.append(f"the vector store holds {store_count} vectors for {len(item_ids)} items")
        ids = np.array(sorted(item_ids & vec_ids), dtype=np.int64)
        if sample is not None and sample < len(ids):
            ids = np.sort(np.random.default_rng(seed).choice(ids, sample, replace=False))
        lost: list[int] = []
        k = int(min(16, max(1, len(item_ids))))
        for start in range(0, len(ids), 256):
            got_ids, vecs = self.vectors(ids[start : start + 256])
            with self._store_lock.shared():
                scores, found = self.store.search(vecs, k)
            for row, item in enumerate(got_ids):
                self_score = float(vecs[row] @ vecs[row])
                # identical vectors tie: an item is found when its id is returned, or when more
                # than k items tie with it at the top
                if item not in found[row] and not scores[row, -1] >= self_score - 1e-4:
                    lost.append(int(item))
        missing = set(item_ids - vec_ids) | set(lost)
        extra = set(vec_ids - item_ids)
        if listed is not None:
            in_store = set(listed.tolist())
            missing |= item_ids - in_store
            extra |= in_store - item_ids
            orphans = sorted(in_store - item_ids)
            if orphans:
                problems.append(f"{len(orphans)} vector(s) in the store for no item, e.g. {orphans[:5]}")
        approximate = isinstance(self.store, FaissStore) and self.store.params.get("type") != "flat"
        if lost:
            message = f"{len(lost)} of {len(ids)} item(s) not found by their own vector, e.g. {lost[:5]}"
            if approximate and len(lost) <= 0.01 * len(ids):
                warnings.append(message + " (an approximate index; within its tuned recall)")
            else:
                problems.append(message)
        gone = [
            path
            for (path,) in db.execute("SELECT path FROM items")
            if os.path.isabs(path) and not os.path.exists(path.split("::", 1)[0])
        ]
        if gone:
            warnings.append(f"{len(gone)} indexed file(s) are gone from disk, e.g. {gone[:3]}")
        dupes = db.execute(
            "SELECT hash, COUNT(*) FROM items WHERE hash IS NOT NULL GROUP BY hash HAVING COUNT(*) > 1"
        ).fetchall()
        if dupes:
            warnings.append(f"{len(dupes)} file content(s) indexed under several paths")
        return {
            "ok": not problems,
            "items": len(item_ids),
            "vectors": len(vec_ids),
            "store_items": store_count,
            #: item ids the store does not hold (or does not find), and store ids with no item
            "missing": sorted(missing),
            "extra": sorted(extra),
            "generation": gen,
            "store_generation": store_gen,
            "self_retrieval_checked": int(len(ids)),
            "self_retrieval_lost": len(lost),
            "problems": problems,
            "warnings": warnings,
        }

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


def encode_records(
    records: Sequence[ImageRecord], foundation: Foundation, batch_size: int = 32, num_workers: int = 0
) -> Iterable[list[tuple]]:
    """Decode in DataLoader workers, encode here: batches of ``(index, hash, vector | None, error)``.

    A bad image yields its ``"reason|message"`` error instead of a vector; the batch survives it.
    """
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        DecodeDataset(records, foundation.transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_list,
    )
    for batch in loader:
        good = [b for b in batch if not b[3]]
        out = [(i, d, None, e) for i, d, _, e in batch if e]
        if good:
            with torch.no_grad():
                vecs = foundation.encode_image(torch.stack([b[2] for b in good])).float().cpu().numpy()
            out += [(b[0], b[1], vecs[j], "") for j, b in enumerate(good)]
        yield out


def _records_for_keys(keys: Sequence[str]) -> list[ImageRecord | None]:
    """Where the images of gallery keys are now: a file, or a tar member found by re-reading its
    shard's index (None for a key whose shard or member is gone)."""
    shards: dict[str, dict[str, ImageRecord]] = {}
    out: list[ImageRecord | None] = []
    for key in keys:
        if "::" not in key:
            out.append(ImageRecord(key) if os.path.isfile(key) else None)
            continue
        shard = key.split("::", 1)[0]
        if shard not in shards:
            try:
                found = discover_images([shard], extensions=GALLERY_EXTENSIONS, canonical=True)
            except (OSError, IsacirError):
                found = []
            shards[shard] = {r.key: r for r in found}
        out.append(shards[shard].get(key))
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _stat(rec: ImageRecord) -> tuple[int, int]:
    try:
        st = os.stat(rec.path)
    except OSError:
        return -1, -1
    if rec.member is not None:
        return rec.size, st.st_mtime_ns
    return st.st_size, st.st_mtime_ns


def _under(key: str, roots: list[str]) -> bool:
    path = key.split("::", 1)[0]
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
