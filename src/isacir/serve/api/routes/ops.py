"""Operations: health and readiness probes, Prometheus metrics, the UI pages and the API spec."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ...._version import __version__
from ...schemas import errors
from ...settings import STATIC
from ..deps import StateDep, require

router = APIRouter()


@router.get("/healthz", tags=["ops"])
def healthz(state: StateDep) -> dict:
    return {"status": "ok", "gallery_items": state.gallery.count(), "version": __version__}


@router.get("/readyz", tags=["ops"], responses={503: {"description": "Not ready: a check failed."}})
def readyz(state: StateDep) -> JSONResponse:
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


@router.get("/", include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text())


@router.get("/pilot", include_in_schema=False)
def pilot_page() -> HTMLResponse:
    """The pilot dashboard; its data and charts come from keyed routes."""
    return HTMLResponse((STATIC / "pilot.html").read_text())


@router.get("/admin", include_in_schema=False)
def admin_page() -> HTMLResponse:
    """The operations console; its data and actions are keyed routes (scope ``models:admin``)."""
    return HTMLResponse((STATIC / "admin.html").read_text())


@router.get("/openapi.json", dependencies=require(None), include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(
    "/metrics",
    dependencies=require("metrics"),
    tags=["ops"],
    responses={**errors(), 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus(state: StateDep) -> Response:
    state.metrics.gallery_items.set(state.gallery.count())
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
