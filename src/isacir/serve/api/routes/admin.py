"""The operations console's actions: learning cycles, version states and the traffic split, and the
audit trail. Each goes through the same code as the command line (:class:`~isacir.registry.Registry`,
the learning loop), needs the ``models:admin`` scope and a reason, and lands in the audit log."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request

from ....pilot.interleaving import interleaving_report
from ....pilot.metrics import operator_cost, summarize
from ....registry import GateError, RegistryError
from ...schemas import CycleIn, RolloutIn, StateIn, errors
from ..deps import StateDep, api_error, require

router = APIRouter(tags=["admin"])
ADMIN = require("models:admin")


def _registry(state: StateDep):
    if state.registry is None:
        raise api_error(409, "this service serves one query encoder (--query-encoder), not a registry", "no_registry")
    return state.registry


def _applied(state: StateDep) -> dict[str, Any]:
    """Apply the registry's new state now, rather than at the next poll."""
    try:
        return state.reload(force=True)
    except Exception as exc:  # noqa: BLE001  (the change is recorded; the service keeps serving what it served)
        return {"changed": False, "error": str(exc)}


@router.get("/v1/admin/versions", dependencies=ADMIN, responses=errors(409))
def versions_overview(state: StateDep, days: float = Query(30.0, gt=0, le=3650)) -> dict:
    """Every registry version with its lineage, history and last gate, and the searches of the last
    ``days`` it answered alone: pilot metrics with intervals and the operator cost; the interleaved
    comparisons and the traffic split beside them."""
    registry = _registry(state)
    queries = list(state.feedback.queries(since=time.time() - days * 86400))
    versions, rollout = registry.snapshot()
    history: dict[str, list[dict]] = {}
    for h in registry.history():
        if h.get("version"):
            history.setdefault(h["version"], []).append(h)
    alone: dict[str, list[dict]] = {}  # the searches each version answered by itself
    for q in queries:
        if q.get("model_version") and not q.get("interleave"):
            alone.setdefault(q["model_version"], []).append(q)
    out = []
    for record in versions:
        mine = history.get(record["version"], [])
        gates = [h["gate"] for h in mine if h.get("gate")]
        pilot = summarize(alone.get(record["version"], []), k=5)
        out.append({**record, "history": mine, "gate": gates[-1] if gates else None, "pilot": pilot,
                    "cost": operator_cost(pilot)})  # fmt: skip
    lineup = state.lineup
    return {
        "days": days,
        "versions": out,
        "rollout": rollout,
        "served": {**lineup.split(), "primary": lineup.primary.name},
        "interleaving": interleaving_report(queries)["comparisons"],
    }


@router.get("/v1/admin/cycle", dependencies=ADMIN, responses=errors())
def cycle_status(state: StateDep) -> dict:
    """The learning loop: whether it runs here, its last step, the open cycle and its evidence."""
    if state.learner is None:
        return {"enabled": False}
    return {"enabled": True, **state.learner.describe()}


@router.post("/v1/admin/cycle", dependencies=ADMIN, responses=errors(409), status_code=202)
def cycle_step(body: CycleIn, request: Request, state: StateDep) -> dict:
    """Run the learning loop's next step now (``start``: begin a cycle), on its own thread."""
    if state.learner is None:
        raise api_error(409, "no learning policy: start the service with --learn-policy FILE", "learning_off")
    actor = request.state.actor
    if not state.learner.request(body.start, body.reason, actor):
        raise api_error(409, "a cycle step is already running; see GET /v1/admin/cycle", "busy")
    state.audit.record(actor, "cycle.requested", start=body.start, reason=body.reason, via="api")
    return {"accepted": True, "start": body.start}


@router.post("/v1/admin/versions/{version}", dependencies=ADMIN, responses=errors(404, 409))
def set_version_state(version: str, body: StateIn, request: Request, state: StateDep) -> dict:
    """Move a version to another state (promote, roll back, retire), through the quality gate for
    ``active`` unless forced."""
    registry = _registry(state)
    actor = request.state.actor
    try:
        record = registry.set_state(version, body.to, actor=actor, reason=body.reason, force=body.force)
    except GateError as exc:
        raise api_error(409, str(exc), "gate") from None
    except RegistryError as exc:
        raise api_error(404 if "no version" in str(exc) else 409, str(exc), "registry") from None
    state.audit.record(actor, "models.state", version=version, to=body.to, reason=body.reason, force=body.force)
    return {"version": record, "reload": _applied(state)}


@router.put("/v1/admin/rollout", dependencies=ADMIN, responses=errors(409))
def set_rollout(body: RolloutIn, request: Request, state: StateDep) -> dict:
    """How the served versions share traffic: the canary share and the interleaved pair."""
    registry = _registry(state)
    actor = request.state.actor
    try:
        rollout = registry.set_rollout(
            body.canary_share, body.interleave, actor, body.reason, interleave_share=body.interleave_share
        )
    except RegistryError as exc:
        raise api_error(409, str(exc), "registry") from None
    state.audit.record(actor, "models.rollout", reason=body.reason, **rollout)
    return {"rollout": rollout, "reload": _applied(state)}


@router.get("/v1/admin/audit", dependencies=ADMIN, responses=errors())
def audit_trail(state: StateDep, limit: int = Query(200, ge=1, le=5000)) -> dict:
    """The newest entries of the audit log first."""
    entries = state.audit.entries()
    return {"entries": entries[::-1][:limit], "total": len(entries)}
