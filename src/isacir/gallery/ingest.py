"""Ingest: indexing folders, lists and shards incrementally, and filling a generation from another."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import DecodeDataset, ImageRecord, collate_list, discover_images
from ..errors import IsacirError
from .changelog import _holding_writer_lock
from .items import (
    GALLERY_EXTENSIONS,
    IndexReport,
    _under,
)

if TYPE_CHECKING:
    from ..foundation import Foundation
    from .gallery import Gallery


class Ingest:
    """Adding, re-embedding and removing items from their image files."""

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
