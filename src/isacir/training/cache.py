"""Teacher-feature cache: the frozen large model's image features, computed once.

The foundation never changes during training, so re-encoding every image with it each epoch is
pure waste. Features are stored in shards of memory-mapped ``.npy`` files (fp16), addressed by
the image's *content hash* inside a folder named by the foundation *fingerprint*, so they are
reused across epochs, runs, renamed files and duplicate images, and can never be mixed up with
another model's features.

Crash safety: a shard's arrays are written to temporary names and renamed, then its rows are
committed to the SQLite index in one transaction. Rows that are not committed do not exist; a
rerun recomputes only those. Trade-off: the teacher sees the *unaugmented* image (augmentations
are applied on the query side only); that is what makes caching possible and it matches how the
gallery is indexed at serving time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data import DecodeDataset, ImageRecord, collate_list
from ..errors import FoundationMismatchError, IsacirError
from ..foundation.base import pool_patch_grid

if TYPE_CHECKING:
    from ..foundation import Foundation

CACHE_FORMAT = 1


class CacheError(IsacirError):
    """A cache folder that is unreadable or belongs to another configuration."""


@dataclass
class BuildReport:
    total: int = 0
    cached_before: int = 0
    computed: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add_skip(self, error: str) -> None:
        """Count a ``"reason|message"`` error from :class:`DecodeDataset` (keeps a few examples)."""
        reason, _, message = error.partition("|")
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_examples) < 20:
            self.skipped_examples.append(message)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.total} images: {self.cached_before} already cached, {self.computed} encoded, "
            f"{self.duplicates} duplicates, {self.skipped_total} skipped ({why}) in {self.seconds:.1f}s"
        )


def _no_transform(image):
    return 0


def hash_records(records: Sequence[ImageRecord], num_workers: int = 0) -> tuple[BuildReport, list[str | None]]:
    """Content hashes of decodable records without encoding anything (training without a cache)."""
    t0 = time.perf_counter()
    report = BuildReport(total=len(records))
    hashes: list[str | None] = [None] * len(records)
    loader = DataLoader(
        DecodeDataset(records, _no_transform), batch_size=64, num_workers=num_workers, collate_fn=collate_list
    )
    for batch in loader:
        for i, digest, _, error in batch:
            if error:
                report.add_skip(error)
            else:
                hashes[i] = digest
    report.seconds = time.perf_counter() - t0
    return report, hashes


class TeacherCache:
    """Content-addressed, sharded, memory-mapped features of one foundation."""

    def __init__(self, root: str | os.PathLike, foundation_fingerprint: str, variant: dict | None = None):
        self.variant = dict(variant or {})
        tag = "-".join(f"{k}{v}" for k, v in sorted(self.variant.items()) if v not in (None, False))
        self.dir = Path(root) / (foundation_fingerprint + (f"-{tag}" if tag else ""))
        self.fingerprint = foundation_fingerprint
        self._db: sqlite3.Connection | None = None
        self._index: dict[str, tuple[int, int]] | None = None
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    # ----- metadata and index ---------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def meta(self) -> dict:
        if not self.meta_path.is_file():
            raise CacheError(f"no teacher cache at {self.dir}")
        return json.loads(self.meta_path.read_text())

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.dir / "index.sqlite", timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS entries (hash TEXT PRIMARY KEY, shard TEXT, row INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS shards (id TEXT PRIMARY KEY, writer INTEGER, rows INTEGER)")
            db.commit()
            self._db = db
        return self._db

    def _write_meta(self, foundation: Foundation, kinds: dict[str, list[int]]) -> None:
        meta = {
            "format": CACHE_FORMAT,
            "foundation_id": foundation.name,
            "foundation_fingerprint": foundation.fingerprint,
            "variant": self.variant,
            "arrays": kinds,
            "dtype": "float16",
        }
        if self.meta_path.is_file():
            old = json.loads(self.meta_path.read_text())
            if old.get("foundation_fingerprint") != foundation.fingerprint:
                raise FoundationMismatchError(
                    f"teacher cache {self.dir} holds features of {old.get('foundation_id')!r} "
                    f"({old.get('foundation_fingerprint')}), not of {foundation.name!r} ({foundation.fingerprint})"
                )
            if old.get("arrays") != kinds:
                raise CacheError(f"teacher cache {self.dir} stores arrays {old.get('arrays')}, not {kinds}")
            return
        tmp = self.meta_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self.meta_path)

    def index(self) -> dict[str, tuple[str, int]]:
        """``content hash -> (shard, row)`` for every committed entry."""
        if self._index is None:
            rows = self._connect().execute("SELECT hash, shard, row FROM entries").fetchall()
            self._index = {h: (s, r) for h, s, r in rows}
        return self._index

    def __contains__(self, digest: str) -> bool:
        return digest in self.index()

    def __len__(self) -> int:
        return len(self.index())

    # ----- reading --------------------------------------------------------------------------------
    def _array(self, shard: str, kind: str) -> np.ndarray:
        key = (shard, kind)
        if key not in self._arrays:
            path = self.dir / f"shard-{shard}.{kind}.npy"
            self._arrays[key] = np.load(path, mmap_mode="r")
        return self._arrays[key]

    def get(self, digests: Sequence[str], kind: str = "global") -> torch.Tensor:
        """Stack cached features of ``digests`` (fp32). Raises KeyError for unknown hashes."""
        idx = self.index()
        rows = [idx[d] for d in digests]
        out = [np.asarray(self._array(s, kind)[r]) for s, r in rows]
        return torch.from_numpy(np.stack(out).astype(np.float32))

    def kinds(self) -> list[str]:
        return list(self.meta().get("arrays", {}))

    # ----- building -------------------------------------------------------------------------------
    def build(
        self,
        records: Sequence[ImageRecord],
        foundation: Foundation,
        batch_size: int = 64,
        shard_size: int = 4096,
        num_workers: int = 0,
        local: bool = True,
        hidden: bool = False,
        local_grid: int | None = None,
        progress: bool = True,
        max_batches: int | None = None,
        writer: int = 0,
    ) -> tuple[BuildReport, list[str | None]]:
        """Encode every record not cached yet; returns the report and each record's hash (None if skipped).

        Several processes (DDP ranks) may build into one cache at once, each over its own part of
        the records and with its own ``writer`` id: shard names never collide and SQLite serialises
        the short index commits. ``max_batches`` stops early (simulated interruption in tests).
        """
        self._writer = writer
        from ..progress import progress_bar

        if foundation.fingerprint != self.fingerprint:
            raise FoundationMismatchError(
                f"cache {self.dir} is for fingerprint {self.fingerprint}, "
                f"got {foundation.name} ({foundation.fingerprint})"
            )
        t0 = time.perf_counter()
        db = self._connect()
        known = self.index()
        wanted = {"global"} | ({"local"} if local else set()) | ({"hidden"} if hidden else set())
        have = set(self.kinds()) if self.meta_path.is_file() else set()
        if known and have and wanted != have:
            raise CacheError(
                f"cache {self.dir} holds {sorted(have)} features but {sorted(wanted)} were requested; "
                "use a separate cache folder per feature set"
            )
        report = BuildReport(total=len(records))
        hashes: list[str | None] = [None] * len(records)
        loader = DataLoader(
            DecodeDataset(records, foundation.transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_list,
            shuffle=False,
        )
        pending: dict[str, list[np.ndarray]] = {}
        pending_hashes: list[str] = []
        seen_now: set[str] = set()
        kinds: dict[str, list[int]] | None = None
        bar = progress_bar(total=len(records), desc="teacher cache", unit="img", disable=not progress, leave=False)
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            todo_px, todo_hash = [], []
            for i, digest, pixels, error in batch:
                if error:
                    report.add_skip(error)
                    continue
                hashes[i] = digest
                if digest in known:
                    report.cached_before += 1
                elif digest in seen_now:
                    report.duplicates += 1
                else:
                    seen_now.add(digest)
                    todo_px.append(pixels)
                    todo_hash.append(digest)
            if todo_px:
                feats = self._encode(foundation, torch.stack(todo_px), local, hidden, local_grid)
                if kinds is None:
                    kinds = {k: list(v.shape[1:]) for k, v in feats.items()}
                    self._write_meta(foundation, kinds)
                for k, v in feats.items():
                    pending.setdefault(k, []).append(v)
                pending_hashes.extend(todo_hash)
                report.computed += len(todo_hash)
                if len(pending_hashes) >= shard_size:
                    self._commit_shard(db, pending, pending_hashes)
                    pending, pending_hashes = {}, []
            bar.update(len(batch))
            bar.set_postfix(new=report.computed, skipped=report.skipped_total)
        bar.close()
        if pending_hashes:
            self._commit_shard(db, pending, pending_hashes)
        report.seconds = time.perf_counter() - t0
        return report, hashes

    @torch.no_grad()
    def _encode(self, foundation, pixels, local, hidden, local_grid) -> dict[str, np.ndarray]:
        feats = foundation.encode_image_features(pixels) if (local or hidden) else None
        out = {}
        if feats is None:
            out["global"] = foundation.encode_image(pixels)
        else:
            out["global"] = feats.global_
            if local:
                if feats.local is None:
                    raise CacheError(f"{foundation.name} exposes no local features; use local=False")
                out["local"] = F.normalize(pool_patch_grid(feats.local, local_grid), dim=-1)
            if hidden:
                if feats.hidden is None:
                    raise CacheError(f"{foundation.name} has no matching-head hidden states")
                cls, rest = feats.hidden[:, :1], feats.hidden[:, 1:]
                out["hidden"] = torch.cat([cls, pool_patch_grid(rest, local_grid)], dim=1)
        return {k: v.float().cpu().numpy().astype(np.float16) for k, v in out.items()}

    def _commit_shard(self, db: sqlite3.Connection, pending: dict[str, list[np.ndarray]], hashes: list[str]) -> None:
        writer = getattr(self, "_writer", 0)
        count = db.execute("SELECT COUNT(*) FROM shards WHERE writer = ?", (writer,)).fetchone()[0]
        shard = f"w{writer:03d}-{int(count):06d}"
        for kind, parts in pending.items():
            arr = np.concatenate(parts)
            final = self.dir / f"shard-{shard}.{kind}.npy"
            tmp = final.with_name(final.name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        with db:
            db.execute("INSERT INTO shards (id, writer, rows) VALUES (?, ?, ?)", (shard, writer, len(hashes)))
            db.executemany(
                "INSERT OR IGNORE INTO entries (hash, shard, row) VALUES (?, ?, ?)",
                [(h, shard, r) for r, h in enumerate(hashes)],
            )
        self._index = None
        for k in [k for k in self._arrays if k[0] == shard]:
            del self._arrays[k]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
