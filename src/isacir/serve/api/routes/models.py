"""The served query-side versions, and applying the registry's state now."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ....errors import IsacirError
from ...schemas import VersionsOut, errors
from ..deps import StateDep, api_error, require

router = APIRouter(tags=["models"])


@router.get("/v1/versions", dependencies=require("search"), responses=errors(), response_model=VersionsOut)
def versions(state: StateDep) -> dict:
    """The served query-side versions with their registry states, and how traffic is split."""
    lineup = state.lineup
    return {
        "versions": [s.describe() for s in lineup.served],
        "primary": lineup.primary.name,
        **lineup.split(),
        "registry": str(state.registry.folder) if state.registry is not None else None,
        "last_reload_error": state.last_reload_error,
    }


@router.post("/v1/admin/reload", dependencies=require("models:admin"), responses=errors(409))
def admin_reload(request: Request, state: StateDep) -> dict:
    """Apply the registry's current state now (the service also watches the registry file)."""
    if state.registry is None:
        raise api_error(409, "this service serves one query encoder (--query-encoder), not a registry", "no_registry")
    try:
        result = state.reload(force=True)
    except IsacirError as exc:
        msg = f"registry change not applied, still serving the previous versions: {exc}"
        raise api_error(409, msg, "reload") from None
    state.audit.record(request.state.actor, "models.reload", versions=result["versions"], via="api")
    return result
