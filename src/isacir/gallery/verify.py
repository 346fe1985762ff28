"""Verify: the catalogue, the vector store and the image files checked against each other."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .stores import FaissStore

if TYPE_CHECKING:
    pass


class Verify:
    """What ``isacir gallery verify`` runs."""

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
