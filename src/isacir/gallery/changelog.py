"""One writer at a time, and the change log that keeps every reader's vector store in step.

Each committed batch writes its change-log entries and a new generation number in the same
transaction; a store records the generation it reflects and replays newer entries (upserts and
deletes by id are idempotent), or adopts a newer index another process persisted."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .items import (
    FOLLOWER_NICE,
    GalleryError,
)
from .stores import FaissStore, VectorStore

if TYPE_CHECKING:
    from .gallery import Gallery

_log = logging.getLogger(__name__)


def _holding_writer_lock(method: Callable) -> Callable:
    """Run a :class:`Gallery` method under the gallery's writer lock (see :meth:`Gallery.writing`)."""

    @functools.wraps(method)
    def locked(self: Gallery, *args: Any, **kwargs: Any) -> Any:
        with self.writing():
            return method(self, *args, **kwargs)

    return locked


class ChangeLog:
    """The writer lock, following the change log, and checkpoints of the vector store."""

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
