"""What the routes share: the served versions, the gallery generations, the feedback store, keys.

The served query-side versions are one immutable :class:`~.lineup.Lineup`, replaced whole when the
registry changes; a request reads ``state.lineup`` once and keeps that snapshot. Work no request
should wait for (registry watch, query-log retention, index-tuning queries) runs on one
housekeeping thread.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..audit import AuditLog
from ..errors import IsacirError
from ..feedback import open_store
from ..feedback.review import ReviewPolicy
from ..refine import RefineWeights
from .batching import MicroBatcher
from .keys import KeyRing
from .learning import BackgroundLearner, LearningLoop
from .lineup import (
    RELEASE_AFTER_S,
    Lineup,
    LiveGeneration,
    Model,
    Served,
    lineup_from_registry,
    registry_stamp,
    released_models,
)
from .metrics import ServiceMetrics
from .querylog import QueryLog
from .review import ReviewDesk
from .settings import ServeSettings

if TYPE_CHECKING:
    from ..adapter import QueryAdapter
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..registry import Registry
    from ..search import Retriever

log = logging.getLogger(__name__)


class ServiceState:
    """What the routes share: models, gallery, feedback store, keys, metrics."""

    def __init__(
        self,
        gallery: Gallery,
        foundation: Foundation,
        query_encoder: QueryEncoder | None,
        settings: ServeSettings,
        adapter: QueryAdapter | None = None,
        registry: Registry | None = None,
        foundation_loader: Callable[[str], Foundation] | None = None,
        edge: str | os.PathLike | None = None,
    ):
        """``foundation_loader`` opens the foundation of another live gallery generation by name
        (default: :func:`isacir.foundation.create_foundation` on the CPU). ``edge`` is the edge
        package of the one served ``query_encoder`` (registry versions carry their own)."""
        if foundation_loader is None:
            from ..foundation import create_foundation

            foundation_loader = create_foundation
        if min(settings.max_batch, settings.max_inflight, settings.batch_workers) < 1 or settings.batch_wait_ms < 0:
            raise IsacirError(
                "max_batch, max_inflight and batch_workers must be >= 1 and batch_wait_ms >= 0; got "
                f"{settings.max_batch}, {settings.max_inflight}, {settings.batch_workers} and {settings.batch_wait_ms}"
            )
        if (query_encoder is None) == (registry is None):
            raise IsacirError("serve either one query encoder or the versions of a registry (exactly one of them)")
        self.settings = settings
        self.registry = registry
        self.home = gallery.home
        self._load_foundation = foundation_loader
        self._first_retrievers: dict[str, Retriever] = {}
        first = LiveGeneration(gallery.generation_name, gallery, foundation)
        if registry is None:
            assert query_encoder is not None
            edge_info, edge_dir = _edge_of(edge, query_encoder.fingerprint) if edge is not None else (None, None)
            only = Served(self._make_model(None, query_encoder, adapter, edge_info, edge_dir, first), "active")
            self.lineup = Lineup(
                (only,), foundation_fingerprint=foundation.fingerprint, foundation_name=foundation.name
            )
            self._gallery_fixed: Gallery | None = gallery
            self._foundation_fixed: Foundation | None = foundation
        else:
            self._gallery_fixed = self._foundation_fixed = None
            generations = self._live_generations(first, None)
            self.lineup = lineup_from_registry(
                registry,
                generations,
                self._make_model,
                None,
                settings.canary_share,
                settings.interleave,
                stamp=self._stamp(),
            )
        for g in self._galleries():
            g.follow()  # other processes' index runs reach searches without searches replaying them
        self.feedback = open_store(settings.feedback_db or self.home / "feedback.sqlite")
        self.metrics = ServiceMetrics()
        self.query_log = QueryLog(self.feedback, settings.query_log, on_commit=self.metrics.query_log_committed)
        #: refinement's weights: fitted ones saved in the gallery folder, else Rocchio's defaults
        self.refine_weights = RefineWeights.load(self.home)
        self.review = ReviewDesk(
            self.feedback,
            ReviewPolicy(settings.review_budget, settings.review_uniform, lease_s=settings.review_lease_s),
            seed=settings.review_seed,
        )
        self.composer: MicroBatcher = MicroBatcher(
            self._compose_batch,
            settings.max_batch,
            settings.batch_wait_ms / 1000.0,
            name="isacir-compose",
            on_batch=self.metrics.text_batch.observe,
            workers=settings.batch_workers,
            wait_ratio=0.25,
        )
        self.keys = settings.keys or KeyRing.from_secrets(settings.api_keys)
        self.audit = AuditLog(settings.audit_log or AuditLog.of_gallery(self.home).path)
        self.upload_dir = Path(settings.upload_dir or self.home / "uploads").resolve()
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._thumbs: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._last_prune = 0.0
        self._reload_lock = threading.Lock()
        self._released: list[tuple[float, Model | LiveGeneration]] = []
        self._failed_stamp: object = None
        self.last_reload_error: str | None = None
        self._noted: deque[tuple[Gallery, Any]] = deque(maxlen=4096)
        self._stop = threading.Event()
        self.maybe_prune()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="isacir-housekeeping", daemon=True)
        self._housekeeper.start()
        #: the learning loop's background job (``serve --learn-policy``), attached by :meth:`attach_learning`
        self.learner: BackgroundLearner | None = None

    # ----- the served versions --------------------------------------------------------------------
    def _make_model(
        self,
        name: str | None,
        qe: QueryEncoder,
        adapter: QueryAdapter | None,
        edge: dict | None,
        edge_dir,
        generation: LiveGeneration,
    ) -> Model:
        """A loaded version over its generation's gallery; the versions of one foundation share the
        first one's re-ranking cache."""
        from ..search import Retriever

        first = self._first_retrievers.get(generation.foundation_fingerprint)
        if first is None or first.gallery is not generation.gallery:
            retriever = Retriever(
                generation.gallery,
                generation.foundation,
                qe,
                adapter=adapter,
                itm_cache_bytes=int(self.settings.itm_cache_mb * 2**20),
                itm_concurrency=self.settings.itm_concurrency,
            )  # checks they all agree
            self._first_retrievers[generation.foundation_fingerprint] = retriever
        else:
            retriever = first.sibling(qe, adapter)
        return Model(name, qe, adapter, retriever, edge, edge_dir, generation.name)

    # ----- gallery generations --------------------------------------------------------------------
    def _stamp(self) -> tuple:
        from ..gallery.generations import Generations

        assert self.registry is not None
        return (registry_stamp(self.registry), Generations(self.home).stamp())

    def _live_generations(self, first: LiveGeneration | None, previous: Lineup | None) -> list[LiveGeneration]:
        """The serving generation first, then every other ready one; reuses what ``previous`` held
        (and ``first``, the gallery the service was started with)."""
        from ..gallery import Gallery
        from ..gallery.generations import Generations

        held = {g.name: g for g in (previous.generations if previous is not None else ())}
        if first is not None:
            held.setdefault(first.name, first)
        out = []
        for g in sorted(Generations(self.home).live(), key=lambda g: not g["serving"]):
            live = held.get(g["name"])
            if live is None:
                gallery = Gallery.open(self.home, generation=g["name"])
                fnd = next(
                    (h.foundation for h in held.values() if h.foundation_fingerprint == g["foundation_fingerprint"]),
                    None,
                ) or self._load_foundation(g["foundation_id"])
                live = LiveGeneration(g["name"], gallery, fnd)
                gallery.check_foundation(fnd)
                if previous is not None:
                    gallery.follow()
            out.append(live)
        return out

    def _galleries(self) -> list[Gallery]:
        if self._gallery_fixed is not None:
            return [self._gallery_fixed]
        return [g.gallery for g in self.lineup.generations]

    @property
    def gallery(self) -> Gallery:
        """The serving generation's gallery: the item catalog (ids are the same in every generation)."""
        if self._gallery_fixed is not None:
            return self._gallery_fixed
        gen = self.lineup.serving_generation
        assert gen is not None
        return gen.gallery

    @property
    def foundation(self) -> Foundation:
        if self._foundation_fixed is not None:
            return self._foundation_fixed
        gen = self.lineup.serving_generation
        assert gen is not None
        return gen.foundation

    @property
    def foundation_fingerprint(self) -> str:
        return self.lineup.foundation_fingerprint

    def live_generations(self) -> list[tuple[Gallery, Foundation]]:
        """Every gallery a write must reach, each with the foundation that encodes for it."""
        if self._gallery_fixed is not None:
            assert self._foundation_fixed is not None
            return [(self._gallery_fixed, self._foundation_fixed)]
        return [(g.gallery, g.foundation) for g in self.lineup.generations]

    @property
    def primary(self) -> Served:
        return self.lineup.primary

    # what the single-version service exposed; now the primary (active) version's
    @property
    def retriever(self) -> Retriever:
        return self.lineup.primary.model.retriever

    @property
    def query_encoder(self) -> QueryEncoder:
        return self.lineup.primary.model.query_encoder

    @property
    def adapter(self) -> QueryAdapter | None:
        return self.lineup.primary.model.adapter

    @property
    def qe_fingerprint(self) -> str:
        return self.lineup.primary.model.qe_fingerprint

    @property
    def adapter_fingerprint(self) -> str | None:
        return self.lineup.primary.model.adapter_fingerprint

    @property
    def version(self) -> str:
        return self.lineup.primary.version

    def reload(self, force: bool = False) -> dict:
        """Serve what the registry says now. Models are loaded beside the running lineup, then
        swapped in with one assignment; a build that fails leaves the running lineup as it was."""
        if self.registry is None:
            raise IsacirError("this service serves one query encoder, not a registry: nothing to reload")
        with self._reload_lock:
            old = self.lineup
            stamp = self._stamp()
            if not force and stamp == old.stamp:
                return {"changed": False, "versions": [s.describe() for s in old.served]}
            try:
                new = lineup_from_registry(
                    self.registry,
                    self._live_generations(None, old),
                    self._make_model,
                    old,
                    self.settings.canary_share,
                    self.settings.interleave,
                    stamp=stamp,
                )
            except Exception as exc:
                self._failed_stamp = stamp
                self.last_reload_error = str(exc)
                log.error("registry change not applied, still serving the previous versions: %s", exc)
                raise
            self.lineup = new
            self._failed_stamp = None
            self.last_reload_error = None
            now = time.time()
            self._released.extend((now, m) for m in released_models(old, new))
            self._close_released(now)
            self.metrics.reloads.inc()
            log.info("serving %s", ", ".join(f"{s.name} ({s.state})" for s in new.served))
            return {"changed": True, "versions": [s.describe() for s in new.served]}

    def _close_released(self, now: float) -> None:
        """Unload models (and close generations) that left the lineup long enough ago that no
        request still holds them."""
        keep = []
        for t, model in self._released:
            if now - t >= RELEASE_AFTER_S:
                model.close()
            else:
                keep.append((t, model))
        self._released = keep

    # ----- housekeeping, off the request path --------------------------------------------------------
    def _housekeeping(self) -> None:
        """One thread does what no request should wait for: taking in noted query vectors, the
        query-log retention and saving tuning queries (:meth:`maybe_prune`), and watching the
        registry for changes (every ``registry_poll_s``)."""
        poll = self.settings.registry_poll_s
        watch = self.registry is not None and poll > 0
        tick = min(1.0, poll) if watch else 1.0
        checked = time.monotonic()
        while not self._stop.wait(tick):
            self._take_noted()
            with contextlib.suppress(Exception):  # a full or read-only disk: requests go on, try later
                self.maybe_prune()
            if watch and time.monotonic() - checked >= poll - 1e-3:
                checked = time.monotonic()
                self._check_registry()

    def _check_registry(self) -> None:
        try:
            stamp = self._stamp()
        except Exception:  # noqa: BLE001  (a damaged file: keep serving, try again)
            return
        if stamp != self.lineup.stamp and stamp != self._failed_stamp:
            with contextlib.suppress(Exception):  # logged by reload; the old lineup keeps serving
                self.reload()
        if self._released:
            with self._reload_lock:
                self._close_released(time.time())

    def note_query(self, gallery: Gallery, vector: Any) -> None:
        """Remember a real composed query for the gallery's index tuning, later, on the
        housekeeping thread (the request only appends to a bounded queue)."""
        self._noted.append((gallery, vector))

    def _take_noted(self) -> None:
        while self._noted:
            try:
                gallery, vector = self._noted.popleft()
            except IndexError:
                return
            gallery.note_query(vector)

    def _compose_batch(self, items):
        """Composed queries of concurrent requests: one text-tower pass per version in the batch."""
        import torch

        out: list = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (retriever, _, _) in enumerate(items):
            groups.setdefault(id(retriever), []).append(i)
        for idx in groups.values():
            retriever = items[idx[0]][0]
            tokens = torch.cat([items[i][1] for i in idx])
            for i, q in zip(idx, retriever.compose(tokens, [items[i][2] for i in idx]), strict=True):
                out[i] = q
        return out

    def compose(self, retriever: Retriever, tokens, text: str):
        """One composed query vector; concurrent callers share a text-tower forward pass."""
        return self.composer((retriever, tokens, text))

    def attach_learning(self, loop: LearningLoop, every_s: float = 300.0) -> BackgroundLearner:
        """Run ``loop`` (an :class:`isacir.cycle.LearningCycle` over this gallery) in the background:
        a step every ``every_s`` seconds, and at once when the console asks; what a step changes in
        the registry is served right after it."""
        if self.registry is None:
            raise IsacirError("a learning policy needs a registry: serve one (--registry), not --query-encoder")
        self.learner = BackgroundLearner(loop, every_s, after=lambda: self.reload(force=True)).start()
        return self.learner

    def close(self) -> None:
        """Stop the batch workers; queued query-log rows are committed first."""
        if self.learner is not None:
            self.learner.close()
        self._stop.set()
        self._housekeeper.join(timeout=10)
        self._take_noted()
        self.composer.close()
        self.query_log.close()
        for g in self._galleries():
            g.close()  # persists what the service's uploads changed, when no one else is writing
        for _, item in self._released:
            item.close()
        self._released = []

    def maybe_prune(self, every_s: float = 600.0) -> int:
        """Apply the query-log retention, and save the tuning queries, at most every ``every_s``
        seconds (the housekeeping thread calls it)."""
        days = self.settings.query_log_retention_days
        now = time.time()
        if now - self._last_prune < every_s:
            return 0
        self._last_prune = now
        for g in self._galleries():
            with contextlib.suppress(OSError):  # a read-only gallery folder keeps them in memory only
                g.save_tuning_queries()
        return self.feedback.prune(days, now) if days is not None else 0

    def info(self) -> dict:
        """What a device must match (the primary version's encoder), and every served version."""
        lineup = self.lineup
        primary = lineup.primary
        qe = primary.model.query_encoder.config
        return {
            "version": __version__,
            "foundation": self.foundation.name,
            "foundation_fingerprint": self.foundation_fingerprint,
            "generation": self.gallery.generation_name,
            "generations": [
                {"name": g.name, "foundation": g.foundation.name, "foundation_fingerprint": g.foundation_fingerprint}
                for g in lineup.generations
            ],
            "query_encoder_fingerprint": primary.model.qe_fingerprint,
            "model_version": primary.name,
            "adapter": primary.model.adapter.describe() if primary.model.adapter is not None else None,
            "served_version": primary.version,
            "served_versions": [s.describe() for s in lineup.served],
            "canary_share": lineup.canary_share,
            "interleave": list(lineup.interleave) if lineup.interleave else None,
            "query_method": qe.method,
            "num_tokens": qe.num_tokens,
            "token_dim": qe.word_dim,
            "template": primary.model.retriever.template,
            "languages": list(self.foundation.languages),
            "gallery_items": self.gallery.count(),
            "store": self.gallery.info["store"],
        }

    def thumbnail(self, item_id: int, path: str, size: int) -> bytes:
        from ..search import read_gallery_image

        key = (item_id, size)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        img = read_gallery_image(path)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self.settings.thumbnail_cache:
                self._thumbs.popitem(last=False)
        return data

    def forget_thumbnails(self, item_id: int) -> None:
        with self._thumb_lock:
            for key in [k for k in self._thumbs if k[0] == item_id]:
                del self._thumbs[key]


def _edge_of(edge: str | os.PathLike, fingerprint: str) -> tuple[dict, Path]:
    """An edge package folder's ``edge.json``, checked to belong to the served query encoder."""
    folder = Path(edge)
    cfg_path = folder / "edge.json"
    if not cfg_path.is_file():
        raise IsacirError(f"{folder} is not an exported edge package (no edge.json); see isacir export-edge")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("query_encoder_fingerprint") != fingerprint:
        raise IsacirError(
            f"edge package {folder} was exported from query encoder {cfg.get('query_encoder_fingerprint')}, "
            f"but the served one is {fingerprint}"
        )
    return {"fingerprint": fingerprint, "files": cfg.get("files", {})}, folder
