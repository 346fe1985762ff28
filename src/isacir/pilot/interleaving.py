"""Team-draft interleaving: compare two served versions on live traffic, one query at a time.

Each query's results merge both versions' rankings (Radlinski, Kurup and Joachims, CIKM 2008):
in every round the team with fewer picks so far (a coin toss on a tie) adds its best item not yet
shown, so each version contributes about half of what an operator sees, at the ranks it would
have put them. An operator's confirmation credits the version whose team contributed the item;
a query is a win for the version with more credited confirmations, a tie otherwise. Because both
versions answer the same query for the same operator, the comparison needs far fewer queries than
an A/B split, and it cannot be skewed by which queries each version happened to get.

The coin tosses come from the query's own seed, so the teams can be recomputed from the log.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from .metrics import wilson


@dataclass
class Interleaved:
    """The merged list and, for each of its items, the team (``"A"`` or ``"B"``) that contributed it."""

    items: list[Hashable]
    teams: dict[Hashable, str]


def query_seed(query_id: str) -> int:
    """A stable seed per query (the same coin tosses whenever the merge is recomputed)."""
    return int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "big")


def team_draft(a: Sequence[Hashable], b: Sequence[Hashable], k: int, seed: int) -> Interleaved:
    """Merge rankings ``a`` and ``b`` into at most ``k`` items by team draft.

    An item both rankings hold is shown once, credited to the team that picked it first. When one
    ranking runs out, the other fills the rest.
    """
    rng = random.Random(seed)
    items: list[Hashable] = []
    teams: dict[Hashable, str] = {}
    picks = {"A": 0, "B": 0}
    pos = {"A": 0, "B": 0}
    lists = {"A": list(a), "B": list(b)}

    def next_of(team: str) -> Hashable | None:
        lst = lists[team]
        while pos[team] < len(lst) and lst[pos[team]] in teams:
            pos[team] += 1
        return lst[pos[team]] if pos[team] < len(lst) else None

    while len(items) < k:
        if picks["A"] != picks["B"]:
            team = "A" if picks["A"] < picks["B"] else "B"
        else:
            team = "A" if rng.random() < 0.5 else "B"
        item = next_of(team)
        if item is None:  # this team has nothing new left: the other one picks
            team = "B" if team == "A" else "A"
            item = next_of(team)
            if item is None:
                break
        items.append(item)
        teams[item] = team
        picks[team] += 1
    return Interleaved(items, teams)


def credit(teams: dict[Hashable, str], confirmed: Iterable[Hashable]) -> str:
    """One query's outcome: ``"A"``, ``"B"`` or ``"tie"`` (confirmations of items neither team
    showed are ignored)."""
    score = {"A": 0, "B": 0}
    for item in set(confirmed):
        if item in teams:
            score[teams[item]] += 1
    if score["A"] == score["B"]:
        return "tie"
    return "A" if score["A"] > score["B"] else "B"


def summarize(outcomes: Iterable[str], a: str = "A", b: str = "B") -> dict:
    """Wins, ties and the win rate of ``a`` over the queries that had a winner, with a Wilson 95 %
    interval (a rate whose interval excludes 0.5 is a real preference)."""
    outcomes = list(outcomes)
    wins_a, wins_b = outcomes.count("A"), outcomes.count("B")
    ties = len(outcomes) - wins_a - wins_b
    decided = wins_a + wins_b
    interval = wilson(wins_a, decided)
    return {
        "versions": {"A": a, "B": b},
        "queries": len(outcomes),
        "wins": {a: wins_a, b: wins_b},
        "ties": ties,
        "win_rate": round(wins_a / decided, 4) if decided else None,
        "win_rate_ci95": [round(x, 4) for x in interval] if interval else None,
        "preferred": (a if interval[0] > 0.5 else b if interval[1] < 0.5 else None) if interval else None,
    }


def logged_outcome(query: dict) -> str | None:
    """A logged interleaved query's outcome (:func:`credit` of its confirmations), or None when
    nobody judged it. ``query`` is a :meth:`FeedbackStore.queries` row with an ``interleave``."""
    if not query["verdicts"]:
        return None
    confirmed = [str(v["candidate_id"]) for v in query["verdicts"] if v["verdict"] == "confirmed"]
    return credit(query["interleave"]["teams"], confirmed)


def interleaving_report(queries: Iterable[dict]) -> dict:
    """The live comparisons in a query log: each interleaved query that an operator judged is a win
    for the version with more confirmed items, or a tie; queries nobody judged do not count.

    ``queries`` are :meth:`FeedbackStore.queries` rows, whose ``interleave`` is
    ``{"A": version, "B": version, "teams": {item id: "A" or "B"}}``."""
    pairs: dict[tuple[str, str], dict] = {}
    for q in queries:
        record = q.get("interleave")
        if not record:
            continue
        pair = pairs.setdefault((record["A"], record["B"]), {"outcomes": [], "shown": 0})
        pair["shown"] += 1
        outcome = logged_outcome(q)
        if outcome is not None:
            pair["outcomes"].append(outcome)
    comparisons = []
    for (a, b), pair in pairs.items():
        summary = summarize(pair["outcomes"], a, b)
        summary["interleaved_queries"] = pair["shown"]
        comparisons.append(summary)
    return {"comparisons": comparisons}
