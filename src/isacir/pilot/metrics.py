"""Pilot metrics from operator verdicts, defined once.

Every number a pilot reports comes from this module: the HTTP summary, the dashboard, the HTML
report and the docs all read :data:`DEFINITIONS` and :func:`summarize`. Input is the query log as
:meth:`isacir.feedback.FeedbackStore.queries` yields it: one dict per answered search with
its ``results`` (gallery ids, best first), ``latency_ms`` and ``verdicts``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..intervals import weighted_rate, wilson
from .tagger import DEFAULT_TAGGER, Tagger

DEFINITIONS: dict[str, str] = {
    "judged": "a query with at least one verdict",
    "positive": "the item of the latest confirmed verdict, or the correct_id of the latest corrected one",
    "precision_at_1": "judged queries whose top-1 result is their positive, over judged queries",
    "hit_at_k": "judged queries whose positive is among the returned top K, over judged queries",
    "false_hit_rate": "judged queries whose top-1 result was rejected, over judged queries",
    "correction_rate": "judged queries with a corrected verdict whose correct_id was not in the returned list, "
    "over judged queries",
    "mrr": "mean over judged queries of 1 / rank of the positive in the returned list (0 when not returned)",
    "unjudged_share": "queries with no verdict, over all queries",
    "latency_p50_ms": "median time to answer a search, over all queries that recorded it",
    "latency_p95_ms": "95th percentile of the same (nearest rank)",
    "operator_s_median": "median over judged queries whose client timed it of the seconds from results shown to "
    "the query's last verdict: operator time per judged query",
    "operator_s_mean": "the mean of the same (what projected operator hours multiply)",
    "operator_timed": "judged queries whose verdicts carry the operator's time",
    "*_ci": "Wilson score interval at 95 % for the rate of the same name",
    "review": "queries the review queue drew, each with its draw probability p: per rate, 'weighted' weights "
    "each judged one by 1/p (Hajek), an estimate over all traffic; 'unweighted' is their plain rate; "
    "'uniform_slice' uses only those drawn uniformly",
}
RATES = ("precision_at_1", "hit_at_k", "false_hit_rate", "correction_rate", "unjudged_share")
GROUPINGS = ("overall", "day", "week", "version", "mode", "category")


def parse_time(text: str | None) -> float | None:
    """``2026-12-01``, ``2026-12-01T10:00:00Z`` (naive means UTC) or unix seconds -> unix seconds."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date, a time or unix seconds: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


#: Verdicts that name the right item.
POSITIVE = ("confirmed", "corrected")


def positive_verdict(query: dict[str, Any]) -> dict[str, Any] | None:
    """The latest verdict that names the right item (the learning export reads the same one)."""
    positive = None
    for v in query["verdicts"]:
        if v["verdict"] in POSITIVE:
            positive = v
    return positive


def positive_of(query: dict[str, Any]) -> int | None:
    positive = positive_verdict(query)
    return None if positive is None else positive["candidate_id"]


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every reported latency was really observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _top1_right(q: dict[str, Any]) -> bool:
    positive = positive_of(q)
    return positive is not None and bool(q["results"]) and q["results"][0] == positive


def _false_hit(q: dict[str, Any]) -> bool:
    results = q["results"]
    return bool(results) and any(v["verdict"] == "rejected" and v["candidate_id"] == results[0] for v in q["verdicts"])


def reviewed_rates(queries: Iterable[dict[str, Any]], review: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The false-hit rate and precision@1 over the judged queries the review queue drew, three ways:
    weighted by 1 / draw probability (an estimate over all traffic), plain, and over the uniform
    slice alone. ``review``: :meth:`~isacir.feedback.FeedbackStore.review_items`."""
    drawn = {r["query_id"]: r for r in review}
    judged = [q for q in queries if q["verdicts"] and q["query_id"] in drawn]
    out: dict[str, Any] = {"drawn": len(drawn), "judged": len(judged)}
    for name, outcome in (("false_hit_rate", _false_hit), ("precision_at_1", _top1_right)):
        ys = [(outcome(q), float(drawn[q["query_id"]]["probability"])) for q in judged]
        hits = sum(y for y, _ in ys)
        uniform = [y for q, (y, _) in zip(judged, ys, strict=True) if drawn[q["query_id"]]["uniform"]]
        plain_ci, slice_ci = wilson(hits, len(ys)), wilson(sum(uniform), len(uniform))
        out[name] = {
            "weighted": weighted_rate(ys),
            "unweighted": {
                "n": len(ys),
                "rate": hits / len(ys) if ys else None,
                "ci": list(plain_ci) if plain_ci else None,
            },
            "uniform_slice": {
                "n": len(uniform),
                "rate": sum(uniform) / len(uniform) if uniform else None,
                "ci": list(slice_ci) if slice_ci else None,
            },
        }
    return out


def summarize(queries: Iterable[dict[str, Any]], k: int | None = None) -> dict[str, Any]:
    """Every metric of :data:`DEFINITIONS` over ``queries``. ``k`` cuts hit@K (default: each query's list)."""
    n = judged = top1 = hits = false_hits = corrections = 0
    reciprocal = 0.0
    latencies: list[float] = []
    operator_s: list[float] = []
    for q in queries:
        n += 1
        if q.get("latency_ms") is not None:
            latencies.append(float(q["latency_ms"]))
        verdicts = q["verdicts"]
        if not verdicts:
            continue
        judged += 1
        timed = [float(v["verdict_s"]) for v in verdicts if v.get("verdict_s") is not None]
        if timed:
            operator_s.append(max(timed))  # the last verdict's time is the time spent on the query
        results = list(q["results"])
        shown = results if k is None else results[:k]
        positive = positive_of(q)
        if _top1_right(q):
            top1 += 1
        if positive is not None and positive in shown:
            hits += 1
        if positive is not None and positive in results:
            reciprocal += 1.0 / (results.index(positive) + 1)
        if _false_hit(q):
            false_hits += 1
        if any(v["verdict"] == "corrected" and v["candidate_id"] not in results for v in verdicts):
            corrections += 1
    out: dict[str, Any] = {"queries": n, "judged": judged}
    counts = {
        "precision_at_1": (top1, judged),
        "hit_at_k": (hits, judged),
        "false_hit_rate": (false_hits, judged),
        "correction_rate": (corrections, judged),
        "unjudged_share": (n - judged, n),
    }
    for name, (num, den) in counts.items():
        out[name] = num / den if den else None
        ci = wilson(num, den)
        out[f"{name}_ci"] = list(ci) if ci else None
    out["mrr"] = reciprocal / judged if judged else None
    out["latency_p50_ms"] = _percentile(latencies, 50)
    out["latency_p95_ms"] = _percentile(latencies, 95)
    out["operator_timed"] = len(operator_s)
    out["operator_s_median"] = _percentile(operator_s, 50)
    out["operator_s_mean"] = sum(operator_s) / len(operator_s) if operator_s else None
    return out


def _day(q: dict[str, Any]) -> list[str]:
    return [dt.datetime.fromtimestamp(q["created"], dt.timezone.utc).date().isoformat()]


def _week(q: dict[str, Any]) -> list[str]:
    year, week, _ = dt.datetime.fromtimestamp(q["created"], dt.timezone.utc).isocalendar()
    return [f"{year}-W{week:02d}"]


def _version(q: dict[str, Any]) -> list[str]:
    return [q.get("version") or q.get("query_encoder_fingerprint") or "unknown"]


def _mode(q: dict[str, Any]) -> list[str]:
    return [q["mode"]]


def keys_for(group_by: str, tagger: Tagger = DEFAULT_TAGGER) -> Callable[[dict[str, Any]], list[str]]:
    """The group key(s) of a query. A query mentioning two categories counts in both."""
    if group_by == "category":
        return lambda q: tagger.tags(q["text"])
    table: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "overall": lambda q: ["all"],
        "day": _day,
        "week": _week,
        "version": _version,
        "mode": _mode,
    }
    if group_by not in table:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, got {group_by!r}")
    return table[group_by]


def group_queries(
    queries: Iterable[dict[str, Any]], group_by: str, tagger: Tagger = DEFAULT_TAGGER
) -> dict[str, list[dict[str, Any]]]:
    """Queries by group key, keys sorted (a query mentioning two categories lands in both)."""
    key = keys_for(group_by, tagger)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for q in queries:
        for name in key(q):
            grouped.setdefault(name, []).append(q)
    return dict(sorted(grouped.items()))


def pilot_summary(
    queries: Iterable[dict[str, Any]],
    group_by: str = "version",
    k: int | None = None,
    tagger: Tagger = DEFAULT_TAGGER,
    review: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``{"definitions", "group_by", "groups": [{"key", ...metrics}], "overall": {...metrics}}``, and
    ``review`` (:func:`reviewed_rates`) when the review queue drew any of ``queries``."""
    rows = list(queries)
    grouped = group_queries(rows, group_by, tagger)
    extra = {}
    if review:
        in_window = {q["query_id"] for q in rows}
        drawn = [r for r in review if r["query_id"] in in_window]
        if drawn:
            extra["review"] = reviewed_rates(rows, drawn)
    return {
        **extra,
        "definitions": DEFINITIONS,
        "group_by": group_by,
        "k": k,
        "groups": [
            {
                "key": name,
                **({"label": version_label(members)} if group_by == "version" else {}),
                **summarize(members, k),
            }
            for name, members in grouped.items()
        ],
        "overall": summarize(rows, k),
    }


def _label(group_by: str, members: Sequence[dict[str, Any]]) -> dict[str, str]:
    return {"label": version_label(members)} if group_by == "version" else {}


def short_version(name: str) -> str:
    """A fingerprint version for people: 8 characters of each fingerprint (``QE+ADAPTER`` keeps both)."""
    return "+".join(part[:8] if len(part) > 12 else part for part in name.split("+"))


def version_label(queries: Sequence[dict[str, Any]]) -> str:
    """How people know the version that answered ``queries``: its registry name with the short
    fingerprint beside it (``v2 (1a2b3c4d+5e6f7a8b)``), or the short fingerprint alone when it was
    served without a registry."""
    key = _version(queries[0])[0] if queries else "unknown"
    names = sorted({str(q["model_version"]) for q in queries if q.get("model_version")})
    return f"{', '.join(names)} ({short_version(key)})" if names else short_version(key)


def hit_curve(queries: Iterable[dict[str, Any]], ks: Sequence[int]) -> dict[int, float | None]:
    """hit@K for each K: the share of judged queries whose positive is in the top K."""
    rows = list(queries)
    return {k: summarize(rows, k)["hit_at_k"] for k in ks}


def operator_cost(summary: dict[str, Any]) -> dict[str, Any]:
    """The cost side of a version, from its :func:`summarize` at ``k = 5``: operator seconds per
    judged query, the share solved at top 1 and within the top 5, corrections per 100 judged
    queries, and the operator hours 1,000 queries would take at that pace (every one judged)."""
    seconds = summary["operator_s_mean"]
    corrections = summary["correction_rate"]
    return {
        "operator_s_per_judged": seconds,
        "timed": summary["operator_timed"],
        "solved_top1": summary["precision_at_1"],
        "solved_top5": summary["hit_at_k"],
        "corrections_per_100": None if corrections is None else 100 * corrections,
        "hours_per_1000_queries": None if seconds is None else seconds * 1000 / 3600,
    }
