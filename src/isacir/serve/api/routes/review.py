"""The review queue: answered queries handed to operators one at a time (see :mod:`isacir.feedback.review`)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query, Request

from ...schemas import ReviewNextOut, ReviewReleaseOut, errors
from ..deps import StateDep, item_json, require

router = APIRouter(tags=["review"])


@router.get("/v1/review/next", dependencies=require("feedback"), responses=errors(), response_model=ReviewNextOut)
def review_next(
    request: Request,
    state: StateDep,
    skip: Optional[str] = Query(None, max_length=64, description="A held query to give back and not get again now."),
) -> dict:
    """The next query to judge, held for this key for the lease; the same one again until it is
    judged (``POST /v1/feedback``), skipped, released, or the lease runs out. ``review`` is null
    when the queue is empty."""
    actor = request.state.actor
    lease = state.feedback.lease_review(actor, state.review.policy.lease_s, skip=skip)
    if lease is None:
        return {"review": None}
    results = []
    for item in lease["results"]:
        path = state.gallery.path_of(item)
        if path is not None:  # an item removed since: nothing to judge there
            results.append(item_json(item, path))
    return {
        "review": {
            "query_id": lease["query_id"],
            "text": lease["text"],
            "mode": lease["mode"],
            "asked": lease["created"],
            "model_version": lease["model_version"],
            "score": round(float(lease["score"]), 4),
            "reasons": lease["reasons"],
            "lease_until": lease["lease_until"],
            "results": results,
        }
    }


@router.post(
    "/v1/review/{query_id}/release",
    dependencies=require("feedback"),
    responses=errors(),
    response_model=ReviewReleaseOut,
)
def review_release(request: Request, state: StateDep, query_id: str) -> dict:
    """Give a held query back to the queue (an operator who cannot judge it)."""
    return {"query_id": query_id, "released": state.feedback.release_review(query_id, request.state.actor)}
