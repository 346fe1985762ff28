"""Gallery generations: a foundation upgrade, blue/green, with no moment without search.

A new foundation (a larger model, a newer checkpoint) puts the gallery in another embedding
space, so it needs new gallery vectors. They are built as a second **generation** of the same
items while the current one keeps serving; the service serves both and routes each request by
the foundation its encoder belongs to; thin-client traffic moves to the new generation in one
atomic switch (with a Milvus server, the alias ``<collection>_serving`` moves to the new
generation's collection too); the old vectors are dropped once its devices have moved::

    GALLERY/
        gallery.json, gallery.sqlite, ...   the first generation (named in gallery.json, "main")
        generations.json                    the generations, their states, which one serves
        generations/NAME/                   every later generation: a gallery folder of its own

Items keep their ids in every generation (ids come from the item's path), so feedback, the
query log, thumbnails and deletes mean the same item whichever generation answered. A new
generation is filled from the serving one's items (paths, content hashes, metadata); running
the build again brings it up to date with what changed since, so the switch can happen when the
two agree. States: ``building`` -> ``ready`` -> ``serving`` -> ``ready`` (after another one is
promoted) -> ``retired``.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ledger import check_name, event
from .home import GenerationError, GenerationLedger

if TYPE_CHECKING:
    from ..foundation import Foundation
    from .gallery import Gallery


class Generations(GenerationLedger):
    """The generations of one gallery folder (``home``): creating, building, promoting, retiring."""

    # ----- writing --------------------------------------------------------------------------------
    def _writing(self) -> contextlib.AbstractContextManager[dict]:
        return self.ledger.writing()

    def create(self, name: str, foundation: Foundation, actor: str = "unknown") -> Gallery:
        """A new, empty generation for ``foundation`` (the same store kind and index family as the
        serving one), or the one of that name being built (a build that is run again)."""
        from .gallery import Gallery

        check_name(name, "generation", GenerationError)
        serving = Gallery.open(self.home)
        store, index = serving.info["store"], serving.info.get("index", "auto")
        serving.close()
        with self._writing() as data:
            gens = data["generations"]
            if name in gens:
                g = gens[name]
                if g["foundation_fingerprint"] != foundation.fingerprint:
                    raise GenerationError(
                        f"generation {name!r} is for foundation {g['foundation_id']} ({g['foundation_fingerprint']}), "
                        f"not {foundation.name} ({foundation.fingerprint}); pick another name"
                    )
                if g["state"] == "retired":
                    raise GenerationError(f"generation {name!r} is retired; pick another name")
            else:
                for g in gens.values():
                    if g["foundation_fingerprint"] == foundation.fingerprint and g["state"] != "retired":
                        raise GenerationError(
                            f"generation {g['name']!r} already holds foundation {foundation.name} "
                            f"({foundation.fingerprint}); build it again with --generation {g['name']}"
                        )
                gens[name] = {
                    "name": name,
                    "path": f"generations/{name}",
                    "foundation_id": foundation.name,
                    "foundation_fingerprint": foundation.fingerprint,
                    "state": "building",
                    "created": time.time(),
                }
                data["history"].append(_event(name, None, "building", actor, "created"))
        gallery = Gallery.open_or_create(self.home / gens[name]["path"], foundation, store=store, index=index)
        alias = self.milvus_alias()
        if alias is not None:
            serving = Gallery.open(self.home)
            try:
                self._point_alias(serving, alias)  # the alias exists before the first switch
            finally:
                serving.close()
        return gallery

    def milvus_alias(self) -> str | None:
        """With a Milvus server: the alias that names the serving generation's collection (None
        for FAISS and Milvus Lite, whose generations live in files of their own)."""
        from .stores import MilvusStore

        root = json.loads((self.home / "gallery.json").read_text())
        if not str(root.get("store", "")).startswith("milvus://"):
            return None
        from .gallery import Gallery

        g = Gallery.open(self.home, generation_root=True)
        try:
            if not (isinstance(g.store, MilvusStore) and g.store.is_server):
                return None
        finally:
            g.close()
        return f"{root['milvus_collection']}_serving"

    @staticmethod
    def _point_alias(gallery: Gallery, alias: str) -> None:
        from .stores import MilvusStore

        if isinstance(gallery.store, MilvusStore):
            gallery.store.point_alias(alias)

    def _set(self, name: str, state: str, actor: str, reason: str) -> None:
        with self._writing() as data:
            g = data["generations"][name]
            if g["state"] != state:
                data["history"].append(_event(name, g["state"], state, actor, reason))
                g["state"] = state

    def build(
        self,
        name: str,
        foundation: Foundation,
        batch_size: int = 32,
        progress: bool = True,
        actor: str = "unknown",
    ) -> dict:
        """Fill (or bring up to date) generation ``name`` with the serving generation's items,
        encoded by ``foundation``; marks it ``ready`` when it holds every item. Resumable: items
        already there with the same content are not encoded again."""
        from .gallery import Gallery

        t0 = time.perf_counter()
        target = self.create(name, foundation, actor)
        if self._read()["serving"] == name:
            target.close()
            raise GenerationError(f"generation {name!r} is the serving one; it is the source, not a copy")
        source = Gallery.open(self.home)
        try:
            report = target.copy_items_from(source, foundation, batch_size=batch_size, progress=progress)
        finally:
            source.close()
            target.close()
        if not report["failed"]:
            state = self.get(name)["state"]
            if state == "building":
                self._set(name, "ready", actor, f"built: {report['items']} items")
        report.update(generation=name, state=self.get(name)["state"], seconds=round(time.perf_counter() - t0, 2))
        return report

    def promote(self, name: str, actor: str = "unknown", reason: str = "") -> dict:
        """Make ``name`` the serving generation (thin-client searches and new devices move to its
        foundation); the one that served stays ``ready``, answering its devices, until retired.
        Refused while ``name`` lacks items the serving generation has: build it again first."""
        from .gallery import Gallery

        g = self.get(name)
        if g["state"] not in ("ready", "serving"):
            raise GenerationError(f"generation {name!r} is {g['state']}; only a ready generation can serve")
        if g["state"] == "serving":
            raise GenerationError(f"generation {name!r} already serves")
        source, target = Gallery.open(self.home), Gallery.open(self.folder(name))
        try:
            missing = np.setdiff1d(source.ids(), target.ids()).size
        finally:
            source.close()
            target.close()
        if missing:
            raise GenerationError(
                f"generation {name!r} lacks {missing} item(s) of the serving generation (added since it was "
                f"built): run `isacir index --gallery {self.home} --generation {name} --foundation "
                f"{g['foundation_id']}` again, then promote"
            )
        with self._writing() as data:
            old = data["serving"]
            data["generations"][old]["state"] = "ready"
            data["history"].append(_event(old, "serving", "ready", actor, f"superseded by {name}"))
            data["generations"][name]["state"] = "serving"
            data["history"].append(_event(name, "ready", "serving", actor, reason or "promoted"))
            data["serving"] = name
        alias = self.milvus_alias()
        if alias is not None:
            promoted = Gallery.open(self.home, generation=name)
            try:
                self._point_alias(promoted, alias)
            finally:
                promoted.close()
        return self.get(name)

    def retire(self, name: str, actor: str = "unknown", reason: str = "") -> dict:
        """Stop answering from generation ``name`` and drop its vectors (its items stay in the
        serving generation). A service drops it within seconds; its devices must have updated."""
        from .gallery import Gallery

        g = self.get(name)
        if g["state"] == "serving":
            raise GenerationError(f"generation {name!r} serves; promote another generation first")
        if g["state"] == "retired":
            raise GenerationError(f"generation {name!r} is already retired")
        self._set(name, "retired", actor, reason or "retired")
        folder = self.home / g["path"]
        gallery = Gallery.open(folder, generation_root=True)
        try:
            freed = gallery.drop_vectors()
        finally:
            gallery.close()
        return {**self.get(name), "freed_bytes": freed}


def _event(name: str, before: str | None, after: str, actor: str, reason: str) -> dict[str, Any]:
    return event("generation", name, before, after, actor, reason)
