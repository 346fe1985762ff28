"""The gallery service: composed search over HTTP, in thin-client and asymmetric (token) modes.

Thin-client mode (``POST /v1/search``) receives the photo and runs the light query side here.
Asymmetric mode (``POST /v1/search/tokens``) receives only the device's token payload; its
fingerprint must match the served query encoder, because tokens from another encoder live in a
different place of the word-embedding space and would silently retrieve garbage (409 instead).

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool; the gallery is
safe for concurrent search and indexing (see :class:`isacir.gallery.Gallery`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Union

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._fs import atomic_write_bytes
from .._version import __version__
from ..audit import AuditLog
from ..data.imageio import load_image
from ..edge.payload import PayloadError, decode_payload, encode_payload
from ..errors import ImageDecodeError, IsacirError
from ..feedback import FeedbackError, is_postgres_url, open_store
from ..gallery.items import FILTER_FIELD, FILTER_MAX_FIELDS, FILTER_MAX_VALUES
from .batching import MicroBatcher
from .keys import SCOPES, ApiKey, KeyFileError, KeyRing, retry_after_header
from .lineup import (
    RELEASE_AFTER_S,
    Lineup,
    LiveGeneration,
    Model,
    Served,
    VersionRefused,
    lineup_from_registry,
    registry_stamp,
    released_models,
)
from .metrics import ServiceMetrics
from .querylog import QueryLog

if TYPE_CHECKING:
    from ..adapter import QueryAdapter
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..registry import Registry
    from ..search import Retriever

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_K = 200
UPLOAD_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


@dataclass
class ServeSettings:
    #: plaintext keys with every scope (tests, the simulator); ``keys`` wins when both are set
    api_keys: tuple[str, ...] = ()
    #: scoped keys, usually from a keys file that is reloaded on change
    keys: Optional[KeyRing] = None
    #: where gallery changes are recorded with the key's name (default: GALLERY/audit.jsonl)
    audit_log: Optional[Path] = None
    max_upload_bytes: int = 10 * 1024 * 1024
    #: a SQLite file (default: GALLERY/feedback.sqlite) or a postgresql:// URL shared by replicas
    feedback_db: Optional[Path | str] = None
    upload_dir: Optional[Path] = None
    thumbnail_cache: int = 512
    #: Drop the payload tokens of unjudged queries older than this many days (None: keep them).
    query_log_retention_days: Optional[float] = None
    #: Browser origins allowed to call the API from other sites (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    #: ``durable``: a response waits until its query-log row is committed; ``async``: it does not
    query_log: str = "durable"
    #: composed text encodes of concurrent requests share one forward pass of up to this many
    max_batch: int = 8
    #: the longest the first request of a batch waits for others (milliseconds); the wait is a
    #: quarter of a typical batch's compute time up to this cap, so a cheap model barely waits
    batch_wait_ms: float = 20.0
    #: threads running composed-query batches at once; one, using every core torch is given, is
    #: best on a CPU, where a batch of 8 on 2 threads costs about half of 8 lone queries on 1
    batch_workers: int = 1
    #: requests on /v1/ being answered at once before new ones get 503 with Retry-After
    max_inflight: int = 32
    #: matching-head re-ranking: cached vision hidden states (MiB on disk; 0: none) and the
    #: requests that may run the head at once
    itm_cache_mb: float = 2048.0
    itm_concurrency: int = 1
    #: with a registry: the share of thin-client searches the canary answers (0..1)
    canary_share: float = 0.1
    #: with a registry: two served versions compared by team-draft interleaving on thin-client searches
    interleave: Optional[tuple[str, str]] = None
    #: with a registry: how often its file is checked for changes (seconds; 0: only POST /v1/admin/reload)
    registry_poll_s: float = 1.0
    extra: dict = field(default_factory=dict)


def read_api_keys(path: str | os.PathLike) -> tuple[str, ...]:
    """The plaintext keys of a one-key-per-line file (what a client sends); ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise IsacirError(f"API key file not found: {p}")
    if p.suffix.lower() == ".toml":
        raise KeyFileError(f"{p} holds key hashes, not keys: pass the key itself (--api-key or ISACIR_API_KEY)")
    keys = tuple(line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#"))
    if not keys:
        raise IsacirError(f"API key file {p} holds no key")
    return keys


# ----- request and error bodies -------------------------------------------------------------------
class ErrorOut(BaseModel):
    """Every error the API answers: a message for people and a stable code for programs."""

    detail: str = Field(..., description="What went wrong, for a person.")
    code: str = Field(..., description="What went wrong, for a program: unauthorized, forbidden, payload_crc, ...")
    errors: Optional[list[dict]] = Field(None, description="Request validation (422): one entry per bad field.")
    active_version: Optional[str] = Field(
        None, description="409 on a token search: the served version a device should update to."
    )


_ERROR_TEXT = {
    401: "No valid API key (send X-API-Key or Authorization: Bearer).",
    403: "The key lacks the scope this route needs.",
    404: "No such item or resource.",
    409: "No served version reads this token payload (encoder_unknown, encoder_retired, foundation_mismatch), "
    "or the registry change cannot be applied.",
    410: "The item is indexed but its file is gone.",
    413: "The request body is over the upload cap.",
    415: "The upload is not an image format the server reads.",
    422: "The request is malformed: a bad field, payload or image.",
    429: "The key is over its rate limit; see Retry-After.",
    503: "The server is saturated; see Retry-After.",
}


def errors(*extra: int) -> dict:
    """The error responses of a keyed route, for the OpenAPI spec: the common ones plus ``extra``."""
    return {
        code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in (401, 403, 413, 422, 429, 503, *extra)
    }


#: gallery ids are non-negative 64-bit integers (FAISS and SQLite ids); larger ones are 422, not 500
ITEM_ID = PathParam(..., ge=0, le=2**63 - 1, description="A gallery item id.")

IMAGE_CONTENT = {"image/*": {"schema": {"type": "string", "format": "binary"}}}


FilterScalar = Annotated[
    Union[StrictBool, StrictInt, Annotated[float, Field(allow_inf_nan=False)], Annotated[str, Field(max_length=1000)]],
    Field(description="A string, number or boolean."),
]
FilterValues = Union[FilterScalar, Annotated[list[FilterScalar], Field(min_length=1, max_length=FILTER_MAX_VALUES)]]
#: the metadata filter of a search: field -> accepted value(s); fields are ANDed
SearchFilter = Annotated[
    dict[Annotated[str, StringConstraints(pattern=FILTER_FIELD)], FilterValues],
    Field(min_length=1, max_length=FILTER_MAX_FIELDS),
]
FILTER_DOC = (
    'Only items whose metadata passes, e.g. {"category": "shoes"} or {"category": ["shoes", "bags"], '
    '"in_stock": true}; fields are ANDed, a list accepts any of its values.'
)

_FILTER: TypeAdapter = TypeAdapter(SearchFilter)


class TokenSearch(BaseModel):
    payload: str = Field(
        ...,
        min_length=1,
        max_length=2_000_000,
        description="The token payload (ISAT binary), base64-encoded.",
    )
    text: str = Field("", max_length=1000, description="The modification, e.g. 'same but in red'.")
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: int = Field(0, ge=0, le=MAX_K, description="Re-rank this many top candidates with the large model.")
    reference_id: Optional[int] = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="The reference is this gallery item: it and its exact copies are left out.",
    )
    exclude_ids: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        default_factory=list, max_length=MAX_K, description="Gallery items never to return."
    )
    filter: Optional[SearchFilter] = Field(None, description=FILTER_DOC)


class FeedbackIn(BaseModel):
    query_id: str = Field(..., min_length=1, max_length=64)
    verdict: Literal["confirmed", "rejected", "corrected"] = Field(..., description="confirmed | rejected | corrected")
    candidate_id: Optional[int] = Field(None, description="confirmed / rejected: one of the query's results.")
    correct_id: Optional[int] = Field(None, description="corrected: the right item, any gallery id (shown or not).")
    note: Optional[str] = Field(None, max_length=2000)


class UploadTooLarge(Exception):
    pass


class _UploadCap:
    """ASGI middleware: 413 for bodies over the cap, by Content-Length or while streaming."""

    def __init__(self, app, limit: int, metrics: ServiceMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        seen = 0
        started = over = False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise UploadTooLarge()
            return message

        async def guarded_send(message):
            # A body parser may catch UploadTooLarge and answer 400 itself (Starlette's form parser
            # does, for chunked bodies): once the cap is crossed, its response is replaced by ours.
            nonlocal started
            if over:
                if not started and message["type"] == "http.response.start":
                    started = True
                    await self._reject(scope, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
            if not started:
                await self._reject(scope, send)

    async def _reject(self, scope, send):
        # never the raw path: a client must not be able to mint label values
        self.metrics.observe("(over upload cap)", scope.get("method", "?"), 413, 0.0)
        response = JSONResponse(
            {"detail": f"request body exceeds the {self.limit:,}-byte upload cap", "code": "too_large"}, status_code=413
        )
        await response({"type": "http"}, _empty_receive, send)


class _Admission:
    """ASGI middleware: at most ``limit`` API requests in flight; beyond that 503 with Retry-After.

    A saturated server that queues without limit answers everyone late; refusing at once lets a
    load balancer or a client retry elsewhere. Probes, the UI and metrics are never refused.
    """

    def __init__(self, app, limit: int, metrics: ServiceMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.inflight = 0  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            self.metrics.observe("(overloaded)", scope.get("method", "?"), 503, 0.0)
            response = JSONResponse(
                {"detail": f"the server is answering {self.limit} requests; retry shortly", "code": "overloaded"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
            return await response(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _empty_receive():
    return {"type": "http.request", "body": b"", "more_body": False}


def _error(status: int, message: str, code: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"detail": message, "code": code})


def _decode_upload(data: bytes, name: str):
    """An uploaded image, or 415 (not an image we read) / 422 (an image, but damaged)."""
    if not data:
        raise _error(422, f"{name}: empty upload", "empty")
    try:
        return load_image(data)
    except ImageDecodeError as exc:
        status = 415 if exc.reason in ("unsupported", "corrupt") else 422
        raise _error(status, f"{name}: {exc}", exc.reason) from None


# ----- the app ------------------------------------------------------------------------------------
class ServiceState:
    """What the routes share: models, gallery, feedback store, cached fingerprints.

    The served query-side versions are one immutable :class:`Lineup`, replaced whole when the
    registry changes; a request reads ``state.lineup`` once and keeps that snapshot."""

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
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if registry is not None and settings.registry_poll_s > 0:
            self._watcher = threading.Thread(target=self._watch_registry, name="isacir-registry", daemon=True)
            self._watcher.start()
        self.maybe_prune()

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
                    old.canary_share,
                    old.interleave,
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

    def _watch_registry(self) -> None:
        registry = self.registry
        assert registry is not None
        while not self._stop.wait(self.settings.registry_poll_s):
            try:
                stamp = self._stamp()
            except Exception:  # noqa: BLE001  (a damaged file: keep serving, try again)
                continue
            if stamp != self.lineup.stamp and stamp != self._failed_stamp:
                with contextlib.suppress(Exception):  # logged by reload; the old lineup keeps serving
                    self.reload()
            if self._released:
                with self._reload_lock:
                    self._close_released(time.time())

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

    def close(self) -> None:
        """Stop the batch workers; queued query-log rows are committed first."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.composer.close()
        self.query_log.close()
        for g in self._galleries():
            g.close()  # persists what the service's uploads changed, when no one else is writing
        for _, item in self._released:
            item.close()
        self._released = []

    def maybe_prune(self, every_s: float = 600.0) -> int:
        """Apply the query-log retention at most every ``every_s`` seconds (cheap to call per request)."""
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


def create_app(state: ServiceState) -> FastAPI:
    settings = state.settings
    metrics = state.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()  # on shutdown: the query log's last group is committed, not dropped

    app = FastAPI(
        lifespan=lifespan,
        title="isacir",
        version=__version__,
        description="Asymmetric zero-shot composed image retrieval: search a gallery with a reference photo "
        "(or its pseudo-word tokens from the device) plus a text modification.",
        openapi_url=None,  # served below, behind the API key like every data route
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.state.metrics = metrics

    keys = state.keys

    def require(scope: str | None):
        """A dependency: 401 without a valid key, 403 without ``scope``, 429 over the key's rate."""
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")

        def check(request: Request) -> Optional[ApiKey]:
            if not keys.enabled:
                request.state.actor = "anonymous"
                return None
            given = request.headers.get("x-api-key") or ""
            bearer = request.headers.get("authorization") or ""
            if not given and bearer.lower().startswith("bearer "):
                given = bearer[7:].strip()
            key = keys.authenticate(given)
            if key is None:
                raise _error(
                    401, "missing or invalid API key (send X-API-Key or Authorization: Bearer)", "unauthorized"
                )
            if scope is not None and scope not in key.scopes:
                raise _error(
                    403,
                    f"key {key.name!r} lacks the {scope!r} scope this route needs "
                    f"(it holds: {', '.join(sorted(key.scopes))})",
                    "forbidden",
                )
            wait = keys.throttle(key)
            if wait is not None:
                raise HTTPException(
                    status_code=429,
                    detail={"detail": f"rate limit of key {key.name!r} exceeded; retry later", "code": "rate_limited"},
                    headers={"Retry-After": retry_after_header(wait)},
                )
            request.state.actor = key.name
            return key

        return [Depends(check)]

    auth = require(None)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", "unmatched"), request.method, status, time.perf_counter() - t0)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.detail, dict):
            body = exc.detail
        else:  # the framework's own: unknown route (404), wrong method (405)
            body = {
                "detail": str(exc.detail),
                "code": {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error"),
            }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'][1:]) or p['loc'][0]}: {p['msg']}" for p in problems[:5])
        return JSONResponse(
            {"detail": f"invalid request: {summary}", "code": "validation", "errors": problems}, status_code=422
        )

    @app.exception_handler(IsacirError)
    async def isacir_error(request: Request, exc: IsacirError):
        return JSONResponse({"detail": str(exc), "code": type(exc).__name__}, status_code=422)

    # ----- open routes -------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok", "gallery_items": state.gallery.count(), "version": __version__}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "Not ready: a check failed."}})
    def readyz() -> JSONResponse:
        """Ready to answer: models loaded, the vector store open, the query log writable."""
        checks: dict[str, str] = {}
        try:
            checks["models"] = "ok" if state.retriever is not None and state.qe_fingerprint else "not loaded"
        except Exception as exc:  # noqa: BLE001  (a probe reports, it does not raise)
            checks["models"] = f"error: {exc}"
        try:
            state.gallery.count()
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["store"] = f"error: {exc}"
        try:
            state.feedback.check_writable()
            checks["query_log"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["query_log"] = f"error: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/pilot", include_in_schema=False)
    def pilot_page() -> HTMLResponse:
        """The pilot dashboard; its data and charts come from keyed routes."""
        return HTMLResponse((STATIC / "pilot.html").read_text())

    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")

    # ----- keyed routes ------------------------------------------------------------------------
    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(
        "/metrics",
        dependencies=require("metrics"),
        tags=["ops"],
        responses={**errors(), 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus() -> Response:
        metrics.gallery_items.set(state.gallery.count())
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/info", dependencies=require("search"), tags=["search"], responses=errors())
    def info() -> dict:
        """What a device must match: the served query encoder's fingerprint, token count and dim."""
        return state.info()

    @app.get("/v1/versions", dependencies=require("search"), tags=["models"], responses=errors())
    def versions() -> dict:
        """The served query-side versions with their registry states, and how traffic is split."""
        lineup = state.lineup
        return {
            "versions": [s.describe() for s in lineup.served],
            "primary": lineup.primary.name,
            "canary_share": lineup.canary_share,
            "interleave": list(lineup.interleave) if lineup.interleave else None,
            "registry": str(state.registry.folder) if state.registry is not None else None,
            "last_reload_error": state.last_reload_error,
        }

    @app.post("/v1/admin/reload", dependencies=require("models:admin"), tags=["models"], responses=errors(409))
    def admin_reload(request: Request) -> dict:
        """Apply the registry's current state now (the service also watches the registry file)."""
        if state.registry is None:
            raise _error(409, "this service serves one query encoder (--query-encoder), not a registry", "no_registry")
        try:
            result = state.reload(force=True)
        except IsacirError as exc:
            msg = f"registry change not applied, still serving the previous versions: {exc}"
            raise _error(409, msg, "reload") from None
        state.audit.record(request.state.actor, "models.reload", versions=result["versions"], via="api")
        return result

    def _package(served: Served):
        from ..edge.package import package_of

        m = served.model
        if m.edge_dir is None:
            raise _error(
                404,
                f"version {m.name or m.qe_fingerprint} has no edge package (register it with "
                "`isacir models add --edge DIR`)",
                "no_edge_package",
            )
        try:
            return package_of(m.edge_dir)
        except OSError:  # a read-only registry: build the package in the gallery's folder
            return package_of(m.edge_dir, state.gallery.dir / "edge-packages" / str(m.name))

    def _served_version(version: str) -> Served:
        """A served version by registry name, or by fingerprint (a service of one query encoder)."""
        lineup = state.lineup
        served = lineup.by_name(version) or next(
            (s for s in lineup.served if s.name is None and s.model.qe_fingerprint == version), None
        )
        if served is None:
            raise _error(404, f"no served version {version!r}", "not_found")
        return served

    @app.get(
        "/v1/edge/files/{version}/{name}",
        dependencies=require("search"),
        tags=["edge"],
        responses={**errors(404), 200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
    )
    def edge_file(version: str = PathParam(..., max_length=64), name: str = PathParam(..., max_length=64)) -> Response:
        """One file of a served version's edge package (what the browser's query side loads)."""
        m = _served_version(version).model
        files = set((m.edge or {}).get("files", {}).values()) | {"edge.json"}
        if m.edge_dir is None or name not in files:
            raise _error(404, f"version {version!r} has no edge file {name!r}", "not_found")
        return FileResponse(
            m.edge_dir / name,
            media_type="application/json" if name.endswith(".json") else "application/octet-stream",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.get("/v1/edge/manifest", dependencies=require("search"), tags=["edge"], responses=errors(404))
    def edge_manifest() -> dict:
        """The edge package devices should run: the active version's (``isacir edge-update`` reads this)."""
        served = state.lineup.active or state.lineup.primary
        pkg = _package(served)
        m = served.model
        return {
            "version": m.name or m.qe_fingerprint,  # a service of one query encoder: its fingerprint
            "fingerprint": m.qe_fingerprint,
            "foundation_fingerprint": state.foundation_fingerprint,
            "sha256": pkg.sha256,
            "size": pkg.size,
            "url": f"/v1/edge/packages/{m.name or m.qe_fingerprint}",
            "files": (m.edge or {}).get("files", {}),
        }

    @app.get(
        "/v1/edge/packages/{version}",
        dependencies=require("search"),
        tags=["edge"],
        responses={**errors(404), 200: {"content": {"application/gzip": {"schema": {"type": "string"}}}}},
    )
    def edge_package(version: str = PathParam(..., max_length=64)) -> Response:
        """A served version's edge package (``model.onnx`` + ``edge.json``, tar.gz); ranges resume a download."""
        served = _served_version(version)
        pkg = _package(served)
        return FileResponse(
            pkg.path,
            media_type="application/gzip",
            filename=f"isacir-edge-{version}.tar.gz",
            headers={"ETag": f'"{pkg.sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
        )

    @app.get("/v1/interleaving", dependencies=require("pilot"), tags=["pilot"], responses=errors())
    def interleaving(
        since: Optional[str] = Query(None, alias="from", description="ISO date or time (UTC), or unix seconds"),
        until: Optional[str] = Query(None, alias="to", description="exclusive"),
    ) -> dict:
        """Team-draft comparisons: per compared pair, wins, ties and the win rate with a 95 % interval."""
        from ..pilot.interleaving import interleaving_report

        start, end = _time_range(since, until)
        return interleaving_report(state.feedback.queries(start, end))

    def _respond(
        lineup: Lineup,
        served: Served,
        mode: str,
        text: str,
        hits,
        k: int,
        payload: bytes | None,
        t0: float,
        reranker: str,
        query_id: Optional[str] = None,
        interleave: Optional[dict] = None,
    ) -> dict:
        m = served.model
        ids = [h.id for h in hits]
        took_ms = round(1000 * (time.perf_counter() - t0), 2)
        state.maybe_prune()
        metrics.searches.labels(mode, served.version).inc()
        qid = state.query_log.log(
            mode,
            text,
            payload,
            k,
            ids,
            m.qe_fingerprint,
            state.foundation_fingerprint,
            latency_ms=took_ms,
            adapter_fingerprint=m.adapter_fingerprint,
            model_version=m.name,
            interleave=interleave,
            query_id=query_id,
        )
        teams = interleave["teams"] if interleave else {}
        out = {
            "query_id": qid,
            "mode": mode,
            "text": text,
            "took_ms": took_ms,
            "model_version": m.name,
            "version_state": served.state,
            "query_encoder_fingerprint": m.qe_fingerprint,
            "adapter_version": m.adapter_fingerprint,
            "reranker": reranker,
            "results": [
                {
                    **_item_json(h.id, h.path),
                    "score": round(float(h.score), 6),
                    "metadata": h.metadata,
                    **({"team": teams[str(h.id)]} if teams else {}),
                }
                for h in hits
            ],
        }
        upgrade = lineup.upgrade_for(served)
        if upgrade is not None:
            out["upgrade"] = upgrade
        if interleave:
            out["interleaving"] = {"A": interleave["A"], "B": interleave["B"]}
        return out

    def _search(
        served: Served, tokens, text: str, k: int, rerank: int, exclude: set[int], where: Optional[dict] = None
    ):
        retriever = served.model.retriever
        prepared = retriever.prepare_tokens(tokens)
        query = state.compose(retriever, prepared, text)
        # a guarded adapter weighs its top-1 against the zero-shot query's (batched the same way)
        anchor = state.compose(retriever.zero_shot, tokens, text) if retriever.zero_shot is not None else None
        retriever.gallery.note_query(query)  # real composed queries are what the IVF index is tuned on
        hits = retriever.search_vector(
            query, k, rerank, prepared, text, exclude=sorted(exclude), where=where, anchor=anchor
        )
        return hits, retriever.reranker(True) if rerank else "none"

    def _excluded(reference_id: Optional[int], exclude_ids: list[int], reference_hash: Optional[str]) -> set[int]:
        """What a search must not return: the reference itself (by id, or by the content of an
        uploaded photo) and its exact copies, plus whatever the caller names."""
        out = set(exclude_ids)
        if reference_id is not None:
            digest = state.gallery.hash_of(reference_id)
            if digest is None:
                raise _error(404, f"no gallery item {reference_id} (reference_id)", "not_found")
            out.add(reference_id)
            reference_hash = reference_hash or digest
        if reference_hash:
            out.update(state.gallery.ids_with_hash(reference_hash))
        return out

    def _parse_filter(raw: Optional[str]) -> Optional[dict]:
        if raw is None or not raw.strip():
            return None
        try:
            return _FILTER.validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _error(422, f"bad filter{' at ' + where if where else ''}: {first['msg']}", "bad_filter") from None

    @app.post("/v1/search", dependencies=require("search"), tags=["search"], responses=errors(404, 415))
    def search(
        image: UploadFile = File(..., description="The reference photo."),
        text: str = Form("", max_length=1000),
        k: int = Form(10, ge=1, le=MAX_K),
        rerank: int = Form(0, ge=0, le=MAX_K),
        reference_id: Optional[int] = Form(None, ge=0, le=2**63 - 1, description="The reference's gallery id."),
        keep_copies: bool = Form(False, description="Also return gallery items identical to the photo."),
        filter: Optional[str] = Form(None, max_length=100_000, description="A JSON object. " + FILTER_DOC),
    ) -> dict:
        """Thin-client mode: the server runs the light query side on the uploaded photo.

        A gallery item identical to the uploaded photo (same content) is the reference itself, not
        an answer: it is left out unless ``keep_copies``."""
        from ..data.sources import content_hash

        t0 = time.perf_counter()
        where = _parse_filter(filter)
        data = image.file.read()
        pil = _decode_upload(data, image.filename or "image")
        exclude = _excluded(reference_id, [], None if keep_copies else content_hash(data))
        lineup = state.lineup
        if lineup.interleave is not None:
            return _interleaved(lineup, pil, text, k, rerank, exclude, where, t0)
        served = lineup.for_thin_client(random.random())
        tokens = served.model.retriever.pseudo_tokens(pil)
        hits, reranker = _search(served, tokens, text, k, rerank, exclude, where)
        payload = encode_payload(tokens[0].float().cpu().numpy(), served.model.qe_fingerprint, "fp16")
        return _respond(lineup, served, "image", text, hits, k, payload, t0, reranker)

    def _interleaved(lineup: Lineup, pil, text: str, k: int, rerank: int, exclude: set[int], where, t0: float):
        """Both compared versions answer; the operator sees their rankings merged by team draft."""
        from ..pilot.interleaving import query_seed, team_draft

        assert lineup.interleave is not None
        pair = [lineup.by_name(name) for name in lineup.interleave]
        answers = []
        for served in pair:
            assert served is not None
            tokens = served.model.retriever.pseudo_tokens(pil)
            answers.append((tokens, *_search(served, tokens, text, k, rerank, exclude, where)))
        qid = uuid.uuid4().hex
        merged = team_draft([h.id for h in answers[0][1]], [h.id for h in answers[1][1]], k, query_seed(qid))
        by_team = {"A": {h.id: h for h in answers[0][1]}, "B": {h.id: h for h in answers[1][1]}}
        hits = [by_team[merged.teams[i]][i] for i in merged.items]
        a = pair[0]
        assert a is not None
        record = {
            "A": lineup.interleave[0],
            "B": lineup.interleave[1],
            "teams": {str(i): team for i, team in merged.teams.items()},
        }
        payload = encode_payload(answers[0][0][0].float().cpu().numpy(), a.model.qe_fingerprint, "fp16")
        reranker = answers[0][2]
        return _respond(lineup, a, "image", text, hits, k, payload, t0, reranker, query_id=qid, interleave=record)

    @app.post("/v1/search/tokens", dependencies=require("search"), tags=["search"], responses=errors(404, 409))
    def search_tokens(body: TokenSearch) -> dict:
        """Asymmetric mode: only the device's pseudo-word tokens travel, never the photo."""
        import torch

        t0 = time.perf_counter()
        try:
            raw = base64.b64decode(body.payload, validate=True)
        except (binascii.Error, ValueError):
            raise _error(422, "payload is not valid base64", "payload_base64") from None
        try:
            decoded = decode_payload(raw)
        except PayloadError as exc:
            raise _error(422, f"bad token payload: {exc}", f"payload_{exc.code}") from None
        lineup = state.lineup
        try:
            served = lineup.for_tokens(decoded.fingerprint, random.random())
        except VersionRefused as exc:
            metrics.refused.labels(exc.code).inc()
            raise HTTPException(
                status_code=409, detail={"detail": str(exc), "code": exc.code, "active_version": exc.active_version}
            ) from None
        qe = served.model.query_encoder.config
        if decoded.tokens.shape != (qe.num_tokens, qe.word_dim):
            raise _error(
                422,
                f"payload holds {decoded.tokens.shape[0]}x{decoded.tokens.shape[1]} tokens; the served "
                f"encoder produces {qe.num_tokens}x{qe.word_dim}",
                "payload_shape",
            )
        tokens = torch.from_numpy(decoded.tokens)[None]
        exclude = _excluded(body.reference_id, body.exclude_ids, None)
        hits, reranker = _search(served, tokens, body.text, body.k, body.rerank, exclude, body.filter)
        return _respond(lineup, served, "tokens", body.text, hits, body.k, raw, t0, reranker)

    def _parse_metadata(raw: Optional[str], n: int) -> Optional[list[dict]]:
        """One metadata object per uploaded image (None: no metadata given)."""
        if raw is None or not raw.strip():
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _error(422, f"metadata is not valid JSON: {exc}", "bad_metadata") from None
        objects = value if isinstance(value, list) else [value] * n
        if len(objects) != n:
            raise _error(422, f"metadata lists {len(objects)} objects for {n} images", "bad_metadata")
        if not all(isinstance(o, dict) for o in objects):
            raise _error(422, "metadata must be a JSON object, or a list of one object per image", "bad_metadata")
        return objects

    @app.post("/v1/gallery", dependencies=require("gallery:write"), tags=["gallery"], responses=errors(415))
    def add_images(
        request: Request,
        images: list[UploadFile] = File(..., description="One or more images to add."),
        metadata: Optional[str] = Form(
            None,
            max_length=1_000_000,
            description='Metadata stored with the images: a JSON object for all of them (e.g. {"title": "Red '
            'dress", "category": "dresses"}), or a JSON list with one object per image, in order.',
        ),
    ) -> JSONResponse:
        """Add images; bad members are reported, the rest are indexed (safe while searches run)."""
        per_image = _parse_metadata(metadata, len(images))
        saved, rejected, meta_of = [], [], {}
        for n_up, up in enumerate(images):
            name = up.filename or "upload"
            try:
                data = up.file.read()
                _decode_upload(data, name)
            except HTTPException as exc:
                rejected.append({"filename": name, "status": exc.status_code, **exc.detail})
                continue
            ext = _ext_from_bytes(data)
            path = state.upload_dir / f"{hashlib.sha256(data).hexdigest()[:24]}{ext}"
            if not path.exists():
                atomic_write_bytes(path, data)
            saved.append((name, path))
            if per_image is not None:
                meta_of[str(path)] = per_image[n_up]
        if not saved:
            status = 415 if all(r["status"] == 415 for r in rejected) else 422
            return JSONResponse(
                {
                    "detail": "no image in the request could be read",
                    "code": "no_images",
                    "added": [],
                    "rejected": rejected,
                },
                status_code=status,
            )
        # an explicit upload brings back a file that was deleted before (no tombstone applies)
        # every live generation gets the images (each encoded by its own foundation), so devices on
        # an older foundation find them too; the serving generation's report is the one returned
        reports = [
            gallery.index([str(p) for _, p in saved], fnd, progress=False, restore=True, metadata_by_path=meta_of)
            for gallery, fnd in state.live_generations()
        ]
        report = reports[0]
        ids = state.gallery.ids_for_paths([str(p) for _, p in saved])
        added = [{"filename": n, "id": ids.get(str(p))} for n, p in saved]
        state.audit.record(request.state.actor, "gallery.add", items=added, via="api")
        return JSONResponse(
            {"added": added, "rejected": rejected, "report": report.to_dict(), "gallery_items": state.gallery.count()}
        )

    @app.delete("/v1/gallery/{item_id}", dependencies=require("gallery:write"), tags=["gallery"], responses=errors(404))
    def remove_image(request: Request, item_id: int = ITEM_ID) -> dict:
        path = state.gallery.path_of(item_id)
        if path is None:
            raise _error(404, f"no gallery item {item_id}", "not_found")
        for gallery, _ in state.live_generations():
            gallery.remove([item_id])
        state.audit.record(request.state.actor, "gallery.remove", ids=[item_id], paths=[path], via="api")
        state.forget_thumbnails(item_id)
        p = Path(path)
        if p.parent.resolve() == state.upload_dir.resolve():
            p.unlink(missing_ok=True)  # uploaded through the API, so ours to delete
        return {"removed": item_id, "gallery_items": state.gallery.count()}

    def _item_path(item_id: int) -> str:
        # Only paths recorded in the gallery database are ever opened: ids are integers, so a
        # request cannot name a file.
        path = state.gallery.path_of(item_id)
        if path is None:
            raise _error(404, f"no gallery item {item_id}", "not_found")
        return path

    @app.get(
        "/v1/images/{item_id}",
        dependencies=require("images"),
        tags=["gallery"],
        responses={**errors(404, 410), 200: {"content": IMAGE_CONTENT}},
    )
    def get_image(item_id: int = ITEM_ID):
        path = _item_path(item_id)
        if "::" not in path:
            if not Path(path).is_file():
                raise _error(410, f"gallery item {item_id} is indexed but its file is gone: {Path(path).name}", "gone")
            return FileResponse(path)
        return Response(state.thumbnail(item_id, path, 4096), media_type="image/jpeg")

    @app.get(
        "/v1/images/{item_id}/thumbnail",
        dependencies=require("images"),
        tags=["gallery"],
        responses={**errors(404, 410), 200: {"content": {"image/jpeg": IMAGE_CONTENT["image/*"]}}},
    )
    def get_thumbnail(item_id: int = ITEM_ID, size: int = Query(256, ge=16, le=1024)):
        if not 16 <= size <= 1024:
            raise _error(422, "thumbnail size must be within 16..1024", "size")
        path = _item_path(item_id)
        try:
            data = state.thumbnail(item_id, path, size)
        except (ImageDecodeError, OSError) as exc:
            raise _error(410, f"gallery item {item_id} cannot be read: {exc}", "gone") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/v1/feedback", dependencies=require("feedback"), tags=["feedback"], responses=errors(404))
    def feedback(body: FeedbackIn) -> dict:
        """Confirm or reject a candidate of an answered query, or name the right item (``corrected``).

        Kept for continual learning: with the logged pseudo tokens and text, a positive verdict is a
        training triplet, and no photo is ever stored.
        """
        if body.verdict == "corrected":
            if body.correct_id is None:
                raise _error(422, "verdict 'corrected' needs correct_id (the right gallery item)", "feedback")
            if body.candidate_id is not None and body.candidate_id != body.correct_id:
                raise _error(422, "for 'corrected', send correct_id alone (candidate_id differs from it)", "feedback")
            item = body.correct_id
        else:
            if body.candidate_id is None:
                raise _error(422, f"verdict {body.verdict!r} needs candidate_id (one of the results)", "feedback")
            if body.correct_id is not None:
                raise _error(422, "correct_id goes with verdict 'corrected' only", "feedback")
            item = body.candidate_id
        if state.query_log.mode == "async":
            state.query_log.flush()  # the query this verdict names may still be in the writer's queue
        try:
            fid = state.feedback.add(
                body.query_id,
                item,
                body.verdict,
                body.note,
                in_gallery=lambda i: state.gallery.path_of(i) is not None,
            )
        except FeedbackError as exc:
            raise _error(exc.status, str(exc), "feedback") from None
        metrics.feedback.labels(body.verdict, state.version).inc()
        return {
            "feedback_id": fid,
            "query_id": body.query_id,
            "candidate_id": item,
            "verdict": body.verdict,
            **({"correct_id": item} if body.verdict == "corrected" else {}),
        }

    @app.get("/v1/pilot/summary", dependencies=require("pilot"), tags=["pilot"], responses=errors())
    def pilot_summary_route(
        group_by: str = Query("version", description="overall | day | week | version | mode | category"),
        since: Optional[str] = Query(None, alias="from", description="ISO date or time (UTC), or unix seconds"),
        until: Optional[str] = Query(
            None, alias="to", description="ISO date or time (UTC), or unix seconds; exclusive"
        ),
        k: Optional[int] = Query(None, ge=1, le=MAX_K, description="cut hit@K at K (default: each query's list)"),
    ) -> dict:
        """Pilot metrics from operator verdicts, per group and overall, with Wilson 95 % intervals."""
        from ..pilot import GROUPINGS, pilot_summary

        if group_by not in GROUPINGS:
            raise _error(422, f"group_by must be one of {', '.join(GROUPINGS)}, got {group_by!r}", "group_by")
        start, end = _time_range(since, until)
        return pilot_summary(state.feedback.queries(start, end), group_by, k)

    @app.get(
        "/v1/pilot/charts/{name}.svg",
        dependencies=require("pilot"),
        tags=["pilot"],
        responses={**errors(404), 200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}}},
    )
    def pilot_chart(
        name: str,
        metric: str = Query("false_hit_rate", description="over-time: false_hit_rate | precision_at_1 | ..."),
        period: str = Query("day", description="over-time: day | week"),
        since: Optional[str] = Query(None, alias="from"),
        until: Optional[str] = Query(None, alias="to"),
    ) -> Response:
        """A pilot chart as SVG, drawn on the server: over-time, hit-at-k or category."""
        from ..pilot import charts

        if name not in charts.CHARTS:
            raise _error(404, f"no chart {name!r}; charts: {', '.join(charts.CHARTS)}", "not_found")
        if metric not in charts.LABELS or period not in ("day", "week"):
            raise _error(422, f"metric must be one of {', '.join(charts.LABELS)}; period day or week", "chart")
        start, end = _time_range(since, until)
        queries = list(state.feedback.queries(start, end))
        if name == "over-time":
            svg = charts.over_time(queries, metric, period)
        else:
            svg = charts.CHARTS[name](queries)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @app.get("/v1/gallery/{item_id}", dependencies=require("images"), tags=["gallery"], responses=errors(404))
    def gallery_item(item_id: int = ITEM_ID) -> dict:
        """One gallery item by id (an operator can open the right item when search did not show it)."""
        return _item_json(item_id, _item_path(item_id))

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(_UploadCap, limit=settings.max_upload_bytes, metrics=metrics)
    app.add_middleware(_Admission, limit=settings.max_inflight, metrics=metrics)
    return app


def _item_json(item_id: int, path: str) -> dict:
    """What a client gets for one gallery item: its id, file name and image links."""
    return {
        "id": item_id,
        "name": Path(path.split("::")[-1]).name,
        "image_url": f"/v1/images/{item_id}",
        "thumbnail_url": f"/v1/images/{item_id}/thumbnail",
    }


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


def _time_range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``from``/``to`` query parameters as unix seconds, or 422 ``time_range``."""
    from ..pilot import parse_time

    try:
        return parse_time(since), parse_time(until)
    except ValueError as exc:
        raise _error(422, str(exc), "time_range") from None


def _feedback_location(spec: str | os.PathLike | None) -> Path | str | None:
    """A postgresql:// URL stays a string (a Path would fold its '//'); anything else is a file path."""
    if spec is None or spec == "":
        return None
    return str(spec) if is_postgres_url(str(spec)) else Path(spec)


def _ext_from_bytes(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return UPLOAD_EXTENSIONS.get(im.format or "", ".png")


def load_service(
    gallery: str | os.PathLike,
    query_encoder: str | os.PathLike | None = None,
    foundation: str | None = None,
    api_key_file: str | os.PathLike | None = None,
    max_upload_mb: float = 10.0,
    feedback_db: str | os.PathLike | None = None,
    query_log_retention_days: float | None = None,
    cors_origins: tuple[str, ...] = (),
    adapter: str | os.PathLike | None = None,
    query_log: str = "durable",
    max_batch: int = 8,
    batch_wait_ms: float = 20.0,
    max_inflight: int = 32,
    batch_workers: int = 1,
    device: str = "auto",
    itm_cache_mb: float = 2048.0,
    itm_concurrency: int = 1,
    registry: str | os.PathLike | None = None,
    canary_share: float = 0.1,
    interleave: tuple[str, str] | None = None,
    registry_poll_s: float = 1.0,
    edge: str | os.PathLike | None = None,
) -> FastAPI:
    """Open gallery, foundation and query side, check that they belong together, build the app.

    The query side is one query encoder (and adapter), or every served version of a model
    registry (``registry``, by default ``GALLERY/models`` when no query encoder is given). The
    foundation defaults to the one the query encoder was trained for, or the gallery's.
    """
    from ..foundation import create_foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..registry import Registry

    if query_encoder is not None and registry is not None:
        raise IsacirError("pass --query-encoder (one version) or --registry (its served versions), not both")
    if query_encoder is None and adapter is not None:
        raise IsacirError("--adapter goes with --query-encoder; a registry version carries its own adapter")
    if edge is not None and query_encoder is None:
        raise IsacirError("--edge goes with --query-encoder; a registry version carries its own edge package")
    if interleave is not None and query_encoder is not None:
        raise IsacirError("--interleave compares two registry versions; serve a registry (--registry)")
    g = Gallery.open(gallery)
    reg = None
    if query_encoder is None:
        reg = Registry(registry) if registry is not None else Registry.of_gallery(gallery)
        if not (reg.folder / "registry.json").is_file():
            raise IsacirError(
                f"no model registry at {reg.folder}: pass --query-encoder DIR, or register versions with "
                "`isacir models add` and promote one to active"
            )
    if foundation is None:
        foundation = (
            QueryEncoder.load_config(query_encoder).foundation_id if query_encoder is not None else None
        ) or g.info["foundation_id"]
    fnd = create_foundation(foundation, device=device)
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd).eval() if query_encoder is not None else None
    settings = ServeSettings(
        keys=KeyRing.from_file(api_key_file) if api_key_file else None,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        feedback_db=_feedback_location(feedback_db),
        query_log_retention_days=query_log_retention_days,
        cors_origins=tuple(cors_origins),
        query_log=query_log,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_inflight=max_inflight,
        batch_workers=batch_workers,
        itm_cache_mb=itm_cache_mb,
        itm_concurrency=itm_concurrency,
        canary_share=canary_share,
        interleave=interleave,
        registry_poll_s=registry_poll_s,
    )
    qa = None
    if adapter is not None:
        from ..adapter import QueryAdapter

        qa = QueryAdapter.from_pretrained(adapter)
    state = ServiceState(
        g,
        fnd,
        qe,
        settings,
        adapter=qa,
        registry=reg,
        foundation_loader=lambda name: create_foundation(name, device=device),
        edge=edge,
    )
    app = create_app(state)
    # The models are hundreds of thousands of long-lived Python objects. A full garbage collection
    # scans them all, tens of milliseconds during which every request waits: that was the p99 tail
    # under load. Frozen objects are never scanned again; what requests allocate still is.
    gc.collect()
    gc.freeze()
    return app
