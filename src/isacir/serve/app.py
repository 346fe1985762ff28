"""The gallery service: composed search over HTTP, in thin-client and asymmetric (token) modes.

Thin-client mode (``POST /v1/search``) receives the photo and runs the light query side here.
Asymmetric mode (``POST /v1/search/tokens``) receives only the device's token payload; its
fingerprint must match a served query encoder, because tokens from another encoder live in a
different place of the word-embedding space and would silently retrieve garbage (409 instead).

The app is assembled here from its parts: the shared state (:mod:`.state`), one router per
resource (:mod:`.api.routes`) with dependencies injected from :mod:`.api.deps`, the request and
error bodies (:mod:`.schemas`) and the middleware (:mod:`.middleware`). Endpoints are plain
``def`` functions, so FastAPI runs them in its thread pool; the gallery is safe for concurrent
search and indexing (see :class:`isacir.gallery.Gallery`).
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .._version import __version__
from ..errors import IsacirError
from ..feedback import is_postgres_url
from . import middleware
from .api.routes import routers
from .keys import KeyRing
from .settings import STATIC, ServeSettings, read_api_keys, ui_problems
from .state import ServiceState

log = logging.getLogger(__name__)

__all__ = ["ServeSettings", "ServiceState", "create_app", "load_service", "read_api_keys"]


def create_app(state: ServiceState) -> FastAPI:
    """The FastAPI app over ``state``: every router, the UI's static files, the middleware."""
    settings = state.settings

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
        openapi_url=None,  # served by the ops router, behind the API key like every data route
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.state.metrics = state.metrics
    middleware.install_handlers(app, state.metrics)  # inside CORS: preflights are not measured
    for router in routers:
        app.include_router(router)
    app.state.route_methods = [
        (route.path_regex, route.methods) for router in routers for route in router.routes if hasattr(route, "methods")
    ]
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    middleware.install_limits(app, state.metrics, settings.max_upload_bytes, settings.max_inflight)
    for problem in ui_problems():
        log.warning(problem)
    return app


def _feedback_location(spec: str | os.PathLike | None) -> Path | str | None:
    """A postgresql:// URL stays a string (a Path would fold its '//'); anything else is a file path."""
    if spec is None or spec == "":
        return None
    return str(spec) if is_postgres_url(str(spec)) else Path(spec)


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
    review_budget: float = 0.1,
    review_uniform: float = 0.2,
    review_lease_s: float = 600.0,
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
        review_budget=review_budget,
        review_uniform=review_uniform,
        review_lease_s=review_lease_s,
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
