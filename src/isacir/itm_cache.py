"""A bounded on-disk cache of gallery images' vision hidden states for matching-head re-ranking.

BLIP's ITM head cross-attends to the whole vision sequence of each candidate (577 x 768 for
ViT-B at 384 px), so re-ranking the top 100 decodes and re-encodes 100 gallery images per
request unless their hidden states are kept. They are kept here, in fp16, one ``.npy`` per
item, keyed by the item's id and content hash (a re-embedded image gets a new entry) under the
foundation's fingerprint (another model's states never match). Writes are atomic; the least
recently used entries are evicted past ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np


class HiddenStateCache:
    def __init__(self, folder: str | os.PathLike, foundation_fingerprint: str, max_bytes: int = 2 * 2**30):
        self.folder = Path(folder) / foundation_fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._bytes = sum(p.stat().st_size for p in self.folder.glob("*.npy"))
        self.hits = 0
        self.misses = 0

    def _path(self, item_id: int, content_hash: str | None) -> Path:
        return self.folder / f"{int(item_id)}-{(content_hash or 'nohash')[:16]}.npy"

    def get(self, item_id: int, content_hash: str | None) -> np.ndarray | None:
        path = self._path(item_id, content_hash)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # absent, or a file damaged by a crash: recomputed and rewritten
            with self._lock:
                self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        with self._lock:
            self.hits += 1
        return arr

    def put(self, item_id: int, content_hash: str | None, hidden: np.ndarray) -> None:
        path = self._path(item_id, content_hash)
        data = np.ascontiguousarray(hidden, dtype=np.float16)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
            existed = path.exists()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            if not existed:
                self._bytes += path.stat().st_size
            if self._bytes > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Drop least recently used entries down to 90 % of the bound (caller holds the lock)."""
        entries = []
        for p in self.folder.glob("*.npy"):
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        entries.sort()
        total = sum(e[1] for e in entries)
        for _, size, p in entries:
            if total <= 0.9 * self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size
        self._bytes = total

    def size_bytes(self) -> int:
        return self._bytes
