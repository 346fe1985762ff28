"""The SQLite catalogue of a gallery folder: items, their vectors and tombstones (the truth that
every vector store is derived from)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .items import (
    GalleryError,
    _under,
    item_id,
)

if TYPE_CHECKING:
    pass


class Catalogue:
    """Reads and writes of ``meta.sqlite``: one connection per thread, WAL mode."""

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

    def _free_id(self, key: str) -> int:
        """The path's id, or (on a hash collision with another path) the next free one."""
        candidate = item_id(key)
        db = self.db()
        while True:
            row = db.execute("SELECT path FROM items WHERE id=?", (candidate,)).fetchone()
            if row is None or row[0] == key:
                return candidate
            candidate = (candidate + 1) % (1 << 53)
