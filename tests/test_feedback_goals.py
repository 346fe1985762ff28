"""The pilot-learning goals: boundaries by hand, the recorded runs judged again, and how sure
each verdict is (the intervals themselves are tested in test_intervals.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from isacir_lab.shapes.feedback_goals import (
    MAX_TEST_FLIP_RATE,
    feedback_goals,
    final_adapter,
    goals_met,
    paired_counts,
    verdict_intervals,
)

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
#: the runs of record, and the same commands rerun on another CPU model
RECORDED = sorted(RESULTS.glob("feedback-*.json")) + sorted(RESULTS.glob("reruns/feedback-*.json"))
RECORDED += sorted(RESULTS.glob("training-seeds/feedback-*.json"))
#: recipe variants (the query head), each with its replicates beside the recipe it varies
VARIANTS = sorted(RESULTS.glob("variants/feedback-*.json"))
RECORDED += [p for p in VARIANTS if "-replicates" not in p.name]


def test_goal_boundaries_hold_as_written():
    before = {"R@1": 20.0, "R@10": 60.0}
    known = {"R@10": 70.0}
    exact = feedback_goals(before, {"R@1": 28.0, "R@10": 65.0}, 0.05, known, {"R@10": 69.0})
    assert list(exact.values()) == [True, True, True, True] and goals_met(exact)
    short = feedback_goals(before, {"R@1": 27.9, "R@10": 64.9}, 0.0501, known, {"R@10": 68.9})
    assert list(short.values()) == [False, False, False, False] and not goals_met(short)
    # without known-phrasings numbers the forgetting goal is not judged; an unknown flip rate fails
    partial = feedback_goals(before, {"R@1": 30.0, "R@10": 70.0}, None)
    assert len(partial) == 3 and not goals_met(partial)
    # the moonshot is reported but does not decide
    moon = feedback_goals(before, {"R@1": 30.0, "R@10": 70.0}, 0.0, known, known, oracle={"R@1": 40.0})
    assert moon["moonshot: test R@1 >= oracle reference caption + modifier"] is False and goals_met(moon)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_recorded_runs_agree_with_the_goals(path):
    """Every recorded ``bench feedback`` run carries the verdicts these goals give its numbers."""
    r = json.loads(path.read_text())
    k = r["known_phrasings"]
    oracle = r.get("oracle_reference_caption_plus_modifier")
    assert feedback_goals(r["before"], r["after"], r["flip_rate"], k["before"], k["after"], oracle) == r["goals"]


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_recorded_runs_turn_back_into_counts(path):
    """The intervals read counts out of stored rates; each served result must give whole counts
    whose rates are the stored ones, and the verdicts must be the goals' own."""
    r = json.loads(path.read_text())
    n = r["test_queries"]
    served = [{"R@1": r["after"]["R@1"], "flip_rate": r["flip_rate"]}]
    served += [r[k] for k in ("tuned_on_held_out", "tuned_then_refit") if r.get(k)]
    for s in served:
        right, gained, lost = paired_counts(r["before"]["R@1"], s["R@1"], s["flip_rate"], n)
        assert right - lost + gained == round(s["R@1"] * n / 100) and 0 <= lost <= right
        v = verdict_intervals(r["before"], s, n)
        goals = feedback_goals(r["before"], {**s, "R@10": 100.0}, s["flip_rate"])
        assert v["r1_gain"]["met"] == goals["test R@1 >= before + 8"]
        assert v["flip_rate"]["met"] == goals["test flip rate <= 5 %"]
        lo, hi = v["r1_gain"]["interval"]
        assert lo < v["r1_gain"]["points"] < hi


def test_counts_that_are_not_counts_of_n_are_refused():
    assert paired_counts(22.6, 30.4, 4 / 113, 500) == (113, 43, 4)
    with pytest.raises(ValueError, match="not a count of 400"):
        paired_counts(22.6, 30.4, 4 / 113, 400)  # 22.6 % of 400 is 90.4 queries


def test_a_verdict_is_decided_only_when_its_interval_clears_the_threshold():
    before = {"R@1": 20.0}
    clear = verdict_intervals(before, {"R@1": 32.0, "flip_rate": 0.0}, 500)  # +12, 0 of 100 flips
    assert clear["r1_gain"]["met"] and clear["r1_gain"]["decided"]
    assert (
        clear["flip_rate"]["met"]
        and clear["flip_rate"]["decided"]
        and clear["flip_rate"]["interval"][0] == pytest.approx(0, abs=1e-12)
    )
    edge = verdict_intervals(before, {"R@1": 28.0, "flip_rate": 0.05}, 500)  # exactly on both thresholds
    assert edge["r1_gain"]["met"] and not edge["r1_gain"]["decided"]
    assert edge["flip_rate"]["met"] and not edge["flip_rate"]["decided"]
    assert edge["flip_rate"]["interval"][0] < MAX_TEST_FLIP_RATE < edge["flip_rate"]["interval"][1]
    far = verdict_intervals(before, {"R@1": 21.0, "flip_rate": 0.3}, 500)
    assert not far["r1_gain"]["met"] and far["r1_gain"]["decided"] and far["flip_rate"]["decided"]


def _renderer():
    from isacir_lab.results import feedback

    return feedback


def test_a_rerun_sits_beside_its_run_of_record():
    """The reruns table pairs a rerun with the recorded run of the same command and judges each
    served recipe of both on every goal."""
    render = _renderer()
    record = json.loads((RESULTS / "feedback-lora4-seed0.json").read_text())
    rerun = copy.deepcopy(record)
    rerun["cpu"] = {"model": "Test CPU"}
    assert record["tuned_then_refit"]["R@1"] - record["before"]["R@1"] < 8  # missed on record
    rerun["tuned_then_refit"]["R@1"] = record["before"]["R@1"] + 9.0
    rows = [line for line in render.feedback_reruns_table([record], [rerun]).splitlines() if line.startswith("| 0 |")]
    served = len(render._served(record))
    assert len(rows) == 2 * served
    assert all("not recorded" in r for r in rows[:served]) and all("Test CPU" in r for r in rows[served:])
    refit = [r for r in rows if "refit on all" in r]
    assert refit[0].endswith("| missed |") and refit[1].endswith("| **met** |")
    # a rerun whose settings match no run of record is refused, not shown alone
    stray = copy.deepcopy(rerun)
    stray["settings"]["lora_rank"] = 8
    with pytest.raises(SystemExit, match="no run of record"):
        render.feedback_reruns_table([record], [stray])
    assert render.feedback_reruns_table([record], []).startswith("No rerun")


REPLICATES = sorted(RESULTS.glob("replicates/feedback-*.json"))
REPLICATES += [p for p in VARIANTS if "-replicates" in p.name]


def test_the_experiments_page_holds_every_served_recipe_of_every_run():
    """The replicates table of the experiments page holds every served recipe of every recorded run,
    the 5-fold recipe's rows among them, in the renderer's order."""
    render = _renderer()
    runs = [json.loads(p.read_text()) for p in RECORDED]
    reps = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("replicates/feedback-*.json"))]
    full = render.feedback_replicates_table(runs, reps).splitlines()[2:]
    folds = render.feedback_replicates_table(runs, reps, ("tuned_by_folds",)).splitlines()[2:]
    assert folds and all("5-fold tuned" in row for row in folds)
    assert folds == [row for row in full if "5-fold tuned" in row] and len(full) > len(folds)
    pages = {p.name: p.read_text() for p in (ROOT / "docs").rglob("*.md")}
    assert "\n".join(full) in pages["feedback-learning.md"]


def test_a_variant_is_shown_after_the_recipe_it_varies():
    """The variants' tables put each variant's replicates right after those of the same recipe
    without it, label it, and refuse a variant whose recipe was never judged on replicates."""
    render = _renderer()
    runs, variants = render.load_variants()
    assert variants and runs, "no recorded recipe variant"
    base = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("replicates/feedback-*.json"))]
    shown = render._beside_their_base(variants, base)
    assert all(var in shown for var in variants) and len(shown) == len({id(r) for r in shown})
    for var in variants:
        settings = var["settings"]
        assert settings.get("query_head") or settings.get("lora_attention") or settings.get("soup", 1) > 1
        plain = {**var, "settings": {**settings, "query_head": False, "lora_attention": False, "soup": 1}}
        bases = [i for i, r in enumerate(shown) if r in base and render._same_recipe(r, plain)]
        assert len(bases) == 1 and bases[0] < shown.index(var)
        assert render._by_recipe(shown[bases[0]]) < render._by_recipe(var)
    assert all(r in variants or r in base for r in shown)
    recorded = [json.loads(p.read_text()) for p in RECORDED]
    table = render.feedback_replicates_table(recorded, shown)
    labels = [row.split(" | ")[1] for row in table.splitlines()[2:]]
    assert any(label.endswith(", query head") for label in labels)
    assert labels.index(next(x for x in labels if "query head" in x)) > 0
    with pytest.raises(SystemExit, match="no replicates of the recipe they vary"):
        render._beside_their_base(variants, [b for b in base if not render._same_recipe(b, shown[0])])


@pytest.mark.parametrize("path", REPLICATES, ids=[p.stem for p in REPLICATES])
def test_recorded_replicates_are_judged_as_their_numbers_say(path):
    """Each recorded ``bench replicates`` run: its pooled numbers are its replicates' (equal sizes),
    its verdicts are the goals judged on them, and it names a recorded run by its final adapter."""
    from conftest import assert_replicates_add_up

    rep = json.loads(path.read_text())
    assert_replicates_add_up(rep)
    runs = [json.loads(p.read_text()) for p in RECORDED]
    assert any(final_adapter(r)["fingerprint"] == rep["run_fingerprint"] for r in runs)


def test_recorded_frontiers_agree_with_the_served_recipes():
    """A recorded frontier at the pair where a recipe trained on every feedback query is served
    equals that recipe's pooled result (the same weights, counted by two code paths); its best
    pair is the best within the flip goal; a wider margin never flips more; the table shows it."""
    from isacir_lab.shapes.feedback_goals import MAX_TEST_FLIP_RATE

    render = _renderer()
    runs = [json.loads(p.read_text()) for p in RECORDED]
    reps = [r for r in (json.loads(p.read_text()) for p in REPLICATES) if r.get("frontier")]
    assert reps, "no recorded bench replicates --frontier run"
    table = render.feedback_frontier_table(runs, reps)
    for rep in reps:
        front = rep["frontier"]
        grid = {(g["interpolation"], g["guard_margin"]): g for g in front["grid"]}
        served = [rep["pooled"][k] for k in ("tuned_then_refit", "tuned_by_folds") if k in rep["adapters"]]
        on_grid = [s for s in served if (s["interpolation"], s["guard_margin"]) in grid]
        assert on_grid, f"seed {rep['seed']}: no served pair of the weighed adapter lies on its grid"
        for s in on_grid:
            cell = grid[(s["interpolation"], s["guard_margin"])]
            assert (cell["R@1"], cell["flips"], cell["right_before"]) == (s["R@1"], s["flips"], s["right_before"])
        within = [g for g in front["grid"] if g["flip_rate"] <= MAX_TEST_FLIP_RATE]
        best = front["best_within_flip_goal"]
        assert best in within and best["R@1"] == max(g["R@1"] for g in within)
        interpolations = sorted({a for a, _ in grid})
        for a in interpolations:
            lost = [grid[(a, m)]["flips"] for m in sorted(m for b, m in grid if b == a)]
            assert lost == sorted(lost, reverse=True)
        label = render._served_by_key(render._replicated_run(runs, rep))[front["recipe"]][0]
        rows = [r for r in table.splitlines() if r.startswith(f"| {rep['seed']} | {label} |")]
        assert [float(r.split(" | ")[3]) for r in rows] == interpolations
        row = rows[interpolations.index(best["interpolation"])]
        assert f"margin {best['guard_margin']:.2f}: {best['R@1_gain']:+.1f} R@1, {best['flips']} of" in row
    assert render.feedback_frontier_table(runs, []).startswith("No `bench replicates --frontier`")


def test_replicates_sit_beside_the_test_split_of_their_run():
    """The replicates table shows each served recipe on the run's test split and pooled over the
    replicates, and refuses replicates whose run is not recorded or whose pair differs."""
    render = _renderer()
    runs = [json.loads(p.read_text()) for p in RECORDED]
    reps = [json.loads(p.read_text()) for p in REPLICATES]
    assert reps, "no recorded bench replicates run"
    table = render.feedback_replicates_table(runs, reps)
    for rep in reps:
        # a soup's run shares its one-adapter curve with the run without soups: the settings decide
        run = next(
            r for r in runs if final_adapter(r)["fingerprint"] == rep["run_fingerprint"] and render._same_recipe(r, rep)
        )
        served = render._served_by_key(run)
        base = [r for r in reps if render._same_recipe(r, render._with_settings(rep, soup=1))]
        if rep["settings"].get("soup", 1) > 1 and base:
            # its pair tuned on the held-out fifth serves the very adapter of the run without soups,
            # whose row shows it: the soup run's row would repeat it
            assert rep["adapters"]["tuned_on_held_out"] == base[0]["adapters"]["tuned_on_held_out"]
            served.pop("tuned_on_held_out")
        labels = {label for label, *_ in served.values()}
        rows = [r for r in table.splitlines() if r.startswith(f"| {rep['seed']} |") and r.split(" | ")[1] in labels]
        assert len(rows) == 2 * len(served)
        assert [r.split(" | ")[2] for r in rows[::2]] == ["the test split"] * len(served)
        for row, (key, (label, *_)) in zip(rows[1::2], served.items(), strict=True):
            assert row.split(" | ")[1] == label
            p = rep["pooled"][key]
            assert f"{p['flips']} of {p['right_before']}" in row and f"{rep['queries']:,}" in row
            assert row.endswith(f"({p['replicates_meeting_every_goal']} of {rep['replicates']} replicates) |")
    stray = copy.deepcopy(reps[0])
    stray["run_fingerprint"] = "f" * 16
    with pytest.raises(SystemExit, match="no recorded run"):
        render.feedback_replicates_table(runs, [stray])
    moved = copy.deepcopy(reps[0])
    moved["pooled"]["tuned_then_refit"]["guard_margin"] += 0.01
    with pytest.raises(SystemExit, match="another pair"):
        render.feedback_replicates_table(runs, [moved])
    assert render.feedback_replicates_table(runs, []).startswith("No `bench replicates`")


def test_the_development_recipe_to_deploy_is_the_one_the_experiments_page_tabulates():
    """One row per seed whose recipe-to-deploy run (of the oracle-operator development runs) has
    replicates, each agreeing with that run's 5-fold row of the additions table (the same pooled
    counts, rendered by another function) and with its own JSON; the experiments page shows the
    table and names the recipe by these flags."""
    from isacir_lab.results.feedback import RECIPE_TO_DEPLOY, recipe_flags

    assert recipe_flags({"lora_rank": 4, "lora_attention": True, "soup": 5, "folds": 5}) == (
        "--lora-rank 4 --lora-attention --soup 5 --tune --folds 5"
    )
    assert recipe_flags({}) == "--tune"
    render = _renderer()
    runs = [json.loads(p.read_text()) for p in RECORDED]
    variants = [json.loads(p.read_text()) for p in VARIANTS if "-replicates" in p.name]
    deploy = [r for r in variants if all(r["settings"].get(k) == v for k, v in RECIPE_TO_DEPLOY.items())]
    assert deploy, "no recorded run of the recipe to deploy with its replicates"
    table = render.feedback_deploy_table(runs, variants)
    rows = table.splitlines()[2:]
    assert [int(r.split(" | ")[0].strip("| ")) for r in rows] == sorted(r["seed"] for r in deploy)
    additions = render.feedback_replicates_table(runs, deploy, ("tuned_by_folds",)).splitlines()[2:]
    for rep, row in zip(sorted(deploy, key=lambda r: r["seed"]), rows, strict=True):
        pooled = [a for a in additions if a.startswith(f"| {rep['seed']} |") and "replicates, pooled" in a]
        assert len(pooled) == 1
        gain, flips = pooled[0].split(" | ")[4:6]
        assert f"| {gain} |" in row and f"| {flips} |" in row
        p = rep["pooled"]["tuned_by_folds"]
        assert f"{p['interpolation']:.2f} / {p['guard_margin']:.2f}" in row
        assert ("**met**" in row.split(" | ")[9]) == p["every_goal"]
    page = (ROOT / "docs" / "experiments" / "feedback-learning.md").read_text()
    assert table in page and f"`{recipe_flags()}`" in page
    assert render.feedback_deploy_table(runs, []).startswith("No run of `--lora-rank 4")
