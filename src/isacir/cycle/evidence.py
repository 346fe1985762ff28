"""What live traffic says about a candidate: promote it, roll it back, or keep comparing.

Pure functions over query-log rows (:meth:`~isacir.feedback.FeedbackStore.queries`), so a
decision can be checked by hand on a made-up log. Two kinds of evidence:

* **interleaving** (``compare = "interleave"``): the candidate and the active version answer the
  same searches, merged by team draft; each judged search is a win, a loss or a tie
  (:mod:`isacir.pilot.interleaving`). The candidate is preferred when the 95 % Wilson interval of
  its win rate lies above 0.5, and refused when it lies below.
* **canary pilot metrics** (``compare = "canary"``, or beside interleaving): the false-hit rate
  (a rejected first result) of the searches each version answered alone, with Wilson intervals.

Beside either, the canary's false-hit rate must not be *worse* than the active version's: worse
means its interval lies wholly above the active one's. Undecided after ``max_days``: rolled back,
since a candidate that cannot show it is better is not worth the risk of a change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..pilot.interleaving import logged_outcome, summarize
from ..pilot.metrics import summarize as pilot_summarize
from .policy import CyclePolicy

DECISIONS = ("promote", "roll_back", "wait")


@dataclass
class Evidence:
    decision: str
    reason: str
    #: the interleaved comparison, the candidate as ``A`` (None when not interleaving)
    interleaving: dict[str, Any] | None
    #: per version (``candidate``, ``active``): judged searches it answered alone, its false-hit
    #: rate and that rate's 95 % interval
    pilot: dict[str, dict[str, Any]]
    days: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alone(queries: list[dict], version: str) -> dict[str, Any]:
    mine = [q for q in queries if not q.get("interleave") and q.get("model_version") == version]
    s = pilot_summarize(mine)
    return {
        "queries": s["queries"],
        "judged": s["judged"],
        "false_hit_rate": s["false_hit_rate"],
        "false_hit_rate_ci": s["false_hit_rate_ci"],
        "operator_s_mean": s["operator_s_mean"],
    }


def interleaved_outcomes(queries: Iterable[dict], candidate: str, active: str) -> list[str]:
    """Each judged interleaved search of the pair as ``"A"`` (the candidate won), ``"B"`` or ``"tie"``."""
    out = []
    for q in queries:
        record = q.get("interleave")
        if not record or {record["A"], record["B"]} != {candidate, active}:
            continue
        won = logged_outcome(q)
        if won is None:
            continue
        if record["A"] != candidate and won != "tie":
            won = "A" if won == "B" else "B"
        out.append(won)
    return out


def judge(
    queries: Iterable[dict], candidate: str, active: str, policy: CyclePolicy, started: float, now: float
) -> Evidence:
    """The decision on ``candidate`` from the searches logged since its comparison ``started``."""
    rows = [q for q in queries if q["created"] >= started]
    days = (now - started) / 86400.0
    pilot = {"candidate": _alone(rows, candidate), "active": _alone(rows, active)}
    cand_ci, act_ci = pilot["candidate"]["false_hit_rate_ci"], pilot["active"]["false_hit_rate_ci"]
    worse = bool(cand_ci and act_ci and cand_ci[0] > act_ci[1])
    cmp = None
    if policy.compare == "interleave":
        cmp = summarize(interleaved_outcomes(rows, candidate, active), a=candidate, b=active)
        judged = cmp["queries"]
    else:
        judged = pilot["candidate"]["judged"]

    def out(decision: str, reason: str) -> Evidence:
        return Evidence(decision, reason, cmp, pilot, round(days, 4))

    if worse:
        fhr = pilot["candidate"]["false_hit_rate"], pilot["active"]["false_hit_rate"]
        return out("roll_back", f"its false-hit rate {fhr[0]:.3f} is worse than the active version's {fhr[1]:.3f}")
    if judged >= policy.min_comparisons:
        if cmp is not None:
            ci = cmp["win_rate_ci95"]
            if ci and ci[0] > 0.5:
                return out("promote", f"preferred in {judged} interleaved searches (win rate {cmp['win_rate']:.3f}, "
                                      f"95 % interval {ci[0]:.3f} to {ci[1]:.3f})")  # fmt: skip
            if ci and ci[1] < 0.5:
                return out("roll_back", f"the active version is preferred in {judged} interleaved searches "
                                        f"(candidate's win rate {cmp['win_rate']:.3f})")  # fmt: skip
        else:
            c, a = pilot["candidate"]["false_hit_rate"], pilot["active"]["false_hit_rate"]
            if c is not None and (a is None or c <= a):
                return out("promote", f"false-hit rate {c:.3f} over {judged} judged canary searches, the active "
                                      f"version's {'none' if a is None else f'{a:.3f}'}")  # fmt: skip
    if days >= policy.max_days:
        return out("roll_back", f"undecided after {days:.1f} days ({judged} judged comparisons)")
    need = max(0, policy.min_comparisons - judged)
    return out("wait", f"{judged} judged comparisons" + (f", {need} more needed" if need else ", no clear winner yet"))
