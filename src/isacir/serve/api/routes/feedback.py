"""Operator verdicts on answered queries: what the learning loop and the pilot metrics read."""

from __future__ import annotations

from fastapi import APIRouter

from ....feedback import FeedbackError
from ...schemas import FeedbackIn, FeedbackOut, errors
from ..deps import StateDep, api_error, require

router = APIRouter(tags=["feedback"])


@router.post(
    "/v1/feedback",
    dependencies=require("feedback"),
    responses=errors(404),
    response_model=FeedbackOut,
    response_model_exclude_unset=True,
)
def feedback(state: StateDep, body: FeedbackIn) -> dict:
    """Confirm or reject a candidate of an answered query, or name the right item (``corrected``).

    Kept for continual learning: with the logged pseudo tokens and text, a positive verdict is a
    training triplet, and no photo is ever stored.
    """
    if body.verdict == "corrected":
        if body.correct_id is None:
            raise api_error(422, "verdict 'corrected' needs correct_id (the right gallery item)", "feedback")
        if body.candidate_id is not None and body.candidate_id != body.correct_id:
            raise api_error(422, "for 'corrected', send correct_id alone (candidate_id differs from it)", "feedback")
        item = body.correct_id
    else:
        if body.candidate_id is None:
            raise api_error(422, f"verdict {body.verdict!r} needs candidate_id (one of the results)", "feedback")
        if body.correct_id is not None:
            raise api_error(422, "correct_id goes with verdict 'corrected' only", "feedback")
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
            verdict_s=body.verdict_s,
        )
    except FeedbackError as exc:
        raise api_error(exc.status, str(exc), "feedback") from None
    # counted for the version that answered the judged query (a canary's verdicts are the canary's)
    answered_by = state.feedback.answered_by(body.query_id) or "unknown"
    state.metrics.feedback.labels(body.verdict, answered_by).inc()
    return {
        "feedback_id": fid,
        "query_id": body.query_id,
        "candidate_id": item,
        "verdict": body.verdict,
        **({"correct_id": item} if body.verdict == "corrected" else {}),
    }
