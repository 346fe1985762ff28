"""Pilot metrics from operator verdicts: the summary, its charts, and interleaved comparisons."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ...schemas import MAX_K, PilotSummaryOut, errors
from ..deps import StateDep, api_error, require, time_range

router = APIRouter(tags=["pilot"], dependencies=require("pilot"))

#: what ``from`` and ``to`` accept, declared so that clients and fuzzers send one of them
TIME_FORMATS = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
    ]
}


@router.get("/v1/interleaving", responses=errors())
def interleaving(
    state: StateDep,
    since: Optional[str] = Query(
        None, alias="from", description="ISO date or time (UTC), or unix seconds", json_schema_extra=TIME_FORMATS
    ),
    until: Optional[str] = Query(None, alias="to", description="exclusive", json_schema_extra=TIME_FORMATS),
) -> dict:
    """Team-draft comparisons: per compared pair, wins, ties and the win rate with a 95 % interval."""
    from ....pilot.interleaving import interleaving_report

    start, end = time_range(since, until)
    return interleaving_report(state.feedback.queries(start, end))


@router.get("/v1/pilot/summary", responses=errors(), response_model=PilotSummaryOut, response_model_exclude_unset=True)
def pilot_summary_route(
    state: StateDep,
    group_by: str = Query("version", description="overall | day | week | version | mode | category"),
    since: Optional[str] = Query(
        None, alias="from", description="ISO date or time (UTC), or unix seconds", json_schema_extra=TIME_FORMATS
    ),
    until: Optional[str] = Query(
        None,
        alias="to",
        description="ISO date or time (UTC), or unix seconds; exclusive",
        json_schema_extra=TIME_FORMATS,
    ),
    k: Optional[int] = Query(None, ge=1, le=MAX_K, description="cut hit@K at K (default: each query's list)"),
) -> dict:
    """Pilot metrics from operator verdicts, per group and overall, with Wilson 95 % intervals."""
    from ....pilot import GROUPINGS, pilot_summary

    if group_by not in GROUPINGS:
        raise api_error(422, f"group_by must be one of {', '.join(GROUPINGS)}, got {group_by!r}", "group_by")
    start, end = time_range(since, until)
    return pilot_summary(state.feedback.queries(start, end), group_by, k, review=state.feedback.review_items())


@router.get(
    "/v1/pilot/charts/{name}.svg",
    responses={**errors(404), 200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}}},
)
def pilot_chart(
    state: StateDep,
    name: str,
    metric: str = Query("false_hit_rate", description="over-time: false_hit_rate | precision_at_1 | ..."),
    period: str = Query("day", description="over-time: day | week"),
    since: Optional[str] = Query(None, alias="from", json_schema_extra=TIME_FORMATS),
    until: Optional[str] = Query(None, alias="to", json_schema_extra=TIME_FORMATS),
) -> Response:
    """A pilot chart as SVG, drawn on the server: over-time, hit-at-k or category."""
    from ....pilot import charts

    if name not in charts.CHARTS:
        raise api_error(404, f"no chart {name!r}; charts: {', '.join(charts.CHARTS)}", "not_found")
    if metric not in charts.LABELS or period not in ("day", "week"):
        raise api_error(422, f"metric must be one of {', '.join(charts.LABELS)}; period day or week", "chart")
    start, end = time_range(since, until)
    queries = list(state.feedback.queries(start, end))
    if name == "over-time":
        svg = charts.over_time(queries, metric, period)
    else:
        svg = charts.CHARTS[name](queries)
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})
