"""Edge packages: what devices and the browser's query side download, per served version."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from ...lineup import Served
from ...schemas import errors
from ...state import ServiceState
from ..deps import StateDep, api_error, require

router = APIRouter(tags=["edge"], dependencies=require("search"))


def _package(state: ServiceState, served: Served):
    from ....edge.package import package_of

    m = served.model
    if m.edge_dir is None:
        raise api_error(
            404,
            f"version {m.name or m.qe_fingerprint} has no edge package (register it with "
            "`isacir models add --edge DIR`)",
            "no_edge_package",
        )
    try:
        return package_of(m.edge_dir)
    except OSError:  # a read-only registry: build the package in the gallery's folder
        return package_of(m.edge_dir, state.gallery.dir / "edge-packages" / str(m.name))


def _served_version(state: ServiceState, version: str) -> Served:
    """A served version by registry name, or by fingerprint (a service of one query encoder)."""
    lineup = state.lineup
    served = lineup.by_name(version) or next(
        (s for s in lineup.served if s.name is None and s.model.qe_fingerprint == version), None
    )
    if served is None:
        raise api_error(404, f"no served version {version!r}", "not_found")
    return served


@router.get(
    "/v1/edge/files/{version}/{name}",
    responses={**errors(404), 200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
def edge_file(
    state: StateDep, version: str = PathParam(..., max_length=64), name: str = PathParam(..., max_length=64)
) -> Response:
    """One file of a served version's edge package (what the browser's query side loads)."""
    m = _served_version(state, version).model
    files = set((m.edge or {}).get("files", {}).values()) | {"edge.json"}
    if m.edge_dir is None or name not in files:
        raise api_error(404, f"version {version!r} has no edge file {name!r}", "not_found")
    return FileResponse(
        m.edge_dir / name,
        media_type="application/json" if name.endswith(".json") else "application/octet-stream",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/v1/edge/manifest", responses=errors(404))
def edge_manifest(state: StateDep) -> dict:
    """The edge package devices should run: the active version's (``isacir edge-update`` reads this)."""
    served = state.lineup.active or state.lineup.primary
    pkg = _package(state, served)
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


@router.get(
    "/v1/edge/packages/{version}",
    responses={**errors(404), 200: {"content": {"application/gzip": {"schema": {"type": "string"}}}}},
)
def edge_package(state: StateDep, version: str = PathParam(..., max_length=64)) -> Response:
    """A served version's edge package (``model.onnx`` + ``edge.json``, tar.gz); ranges resume a download."""
    served = _served_version(state, version)
    pkg = _package(state, served)
    return FileResponse(
        pkg.path,
        media_type="application/gzip",
        filename=f"isacir-edge-{version}.tar.gz",
        headers={"ETag": f'"{pkg.sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
