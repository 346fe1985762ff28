"""Team-draft interleaving on hand-made rankings: the merge, the credit and the summary."""

from __future__ import annotations

import random

import pytest

from isacir.pilot.interleaving import credit, query_seed, summarize, team_draft


def _seed_with(tosses: list[bool]) -> int:
    """A seed whose first coin tosses say A (True) or B (False) in this order."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if all((rng.random() < 0.5) == want for want in tosses):
            return seed
    raise AssertionError("no such seed")


def test_a_hand_computed_merge_and_its_credit():
    # A wins the first toss and picks 1; B (behind) picks 2; B wins the second toss and picks 5;
    # A (behind) skips 2, already shown, and picks 3
    merged = team_draft([1, 2, 3, 4], [2, 5, 6, 7], k=4, seed=_seed_with([True, False]))
    assert merged.items == [1, 2, 5, 3]
    assert merged.teams == {1: "A", 2: "B", 5: "B", 3: "A"}
    assert credit(merged.teams, [2]) == "B"
    assert credit(merged.teams, [1, 3]) == "A"
    assert credit(merged.teams, [1, 5]) == "tie"
    assert credit(merged.teams, [99]) == "tie"  # an item neither team showed


@pytest.mark.parametrize("seed", range(25))
def test_merge_invariants(seed):
    rng = random.Random(seed)
    pool = list(range(30))
    a, b = rng.sample(pool, 12), rng.sample(pool, 12)
    k = rng.randint(1, 20)
    merged = team_draft(a, b, k, seed)
    assert len(merged.items) == len(set(merged.items)) == min(k, len(set(a) | set(b)))
    assert set(merged.teams) == set(merged.items)
    for team, ranking in (("A", a), ("B", b)):
        mine = [x for x in merged.items if merged.teams[x] == team]
        assert all(x in ranking for x in mine)
        assert mine == sorted(mine, key=ranking.index)  # each team shows its items in its own order
    picks = [merged.teams[x] for x in merged.items]
    for n in range(1, len(picks) + 1):  # the teams stay within one pick of each other while both can pick
        if n <= 2 * min(len(a), len(b)) // 2:
            assert abs(picks[:n].count("A") - picks[:n].count("B")) <= 1


def test_one_ranking_running_out_leaves_the_rest_to_the_other():
    merged = team_draft([1], [2, 3, 4], k=4, seed=query_seed("q1"))
    assert sorted(merged.items) == [1, 2, 3, 4] and merged.teams[1] == "A"
    assert [merged.teams[x] for x in (2, 3, 4)] == ["B", "B", "B"]
    assert team_draft([], [], k=5, seed=1).items == []


def test_the_better_ranking_wins_the_interleaved_comparison():
    """The right item sits higher in A's ranking than in B's; a simulated operator confirms it."""
    rng = random.Random(7)
    outcomes = []
    for q in range(300):
        right = 1000 + q
        others = rng.sample(range(1000), 20)
        ra, rb = rng.randint(0, 3), rng.randint(4, 9)
        a = others[:ra] + [right] + others[ra:]
        b = others[10 : 10 + rb] + [right] + others[:5]
        merged = team_draft(a, b, k=10, seed=query_seed(f"q{q}"))
        outcomes.append(credit(merged.teams, [right] if right in merged.items else []))
    summary = summarize(outcomes, a="better", b="worse")
    assert summary["wins"]["better"] > 3 * summary["wins"]["worse"]
    assert summary["preferred"] == "better" and summary["win_rate_ci95"][0] > 0.5


def test_summary_counts_and_interval():
    s = summarize(["A"] * 30 + ["B"] * 10 + ["tie"] * 5, a="v2", b="v1")
    assert s["queries"] == 45 and s["wins"] == {"v2": 30, "v1": 10} and s["ties"] == 5
    assert s["win_rate"] == 0.75 and s["win_rate_ci95"][0] < 0.75 < s["win_rate_ci95"][1]
    assert s["preferred"] == "v2"
    even = summarize(["A", "B"] * 10)
    assert even["win_rate"] == 0.5 and even["preferred"] is None
    assert summarize(["tie", "tie"])["win_rate"] is None
