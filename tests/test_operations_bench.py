"""``bench operations`` on the scaled-down bench: days of realistic operators through a real service
over a registry, the learning loop after each day, and a bad adapter offered once."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_weeks_of_a_pilot_with_the_loop_running_itself(tmp_path, small_shapes):
    from conftest import copy_shapes_cache

    from isacir.adapt import AdaptSettings
    from isacir.cycle import CycleStore
    from isacir.feedback import FeedbackStore
    from isacir.pilot.metrics import summarize
    from isacir.registry import Registry
    from isacir_lab.shapes.bench import ShapesBenchConfig
    from isacir_lab.shapes.operations_bench import OperationsConfig, run_operations_bench
    from isacir_lab.shapes.operators import OperatorConfig

    copy_shapes_cache(small_shapes[0], tmp_path)
    cfg = replace(ShapesBenchConfig.small(seed=0), methods=("isa",))
    # the loop's own cycles wait for more verdicts than the pilot has, so that the one cycle is the
    # bad adapter's, offered on day 3 (what the small ISA learns from 120 queries depends on the CPU)
    ops = OperationsConfig(weeks=2, days_per_week=2, queries_per_day=30, bad_week=2, min_new_verdicts=10_000,
                           canary_share=0.5, min_comparisons=8)  # fmt: skip
    settings = AdaptSettings.auto(steps=30, batch_size=16, gallery_negatives=32, seed=0, folds=2)
    summary = run_operations_bench(tmp_path, 0, ops, settings, OperatorConfig(seed=0), cfg, log=lambda *_: None,
                                   progress=False)  # fmt: skip
    detail = json.loads((tmp_path / "operations-seed0.json").read_text())
    run = next((tmp_path / "operations").iterdir())
    registry, store = Registry(run / "models"), FeedbackStore(run / "feedback.sqlite")
    assert summary["errors_5xx"] == 0 and [w["week"] for w in summary["weeks"]] == [1, 2]
    # each week's numbers are the product's own summary of that week's searches in the log
    for w, span in zip(summary["weeks"], (detail["days"][:2], detail["days"][2:]), strict=True):
        s = summarize(store.queries(since=span[0]["start"], until=span[-1]["end"]))
        assert w["queries"] == s["queries"] and w["judged"] == s["judged"] >= 30 * 2 * 0.5
        assert w["false_hit_rate"] == round(100 * s["false_hit_rate"], 2)
        assert w["ci"][0] <= w["false_hit_rate"] <= w["ci"][1]
        assert w["operator_s_per_query"] > OperatorConfig().seconds_first  # the operators took time
    # every decision is the registry's: its states match the cycles' ends, one active version
    cycles = CycleStore(registry.folder).all()
    assert [d["cycle"] for d in summary["decisions"]] == [c["id"] for c in cycles] and len(cycles) == 1
    ends = {"promoted": "active", "rolled_back": "retired", "refused": "retired"}
    states = {v["version"]: v["state"] for v in registry.versions()}
    for d in summary["decisions"]:
        if d["state"] in ends:
            assert states[d["version"]] in (ends[d["state"]], "deprecated" if d["state"] == "promoted" else "")
    assert list(states.values()).count("active") == 1
    # the bad adapter was offered once, never became active, and touched at most its share
    bad = summary["bad_version"]
    assert bad["offered"] and bad["offered_on_day"] == 3 and not bad["reached_active"]
    assert summary["goals"]["the bad adapter was offered"] is True
    # judged on the real log by the gate: refused there, or compared in its canary
    assert bad["state"] in ("refused", "canary", "rolled_back")
    assert states[bad["version"]] != "active"
    assert [d["offered"] for d in summary["decisions"]].count(True) == 1
    assert 0.0 <= bad["share_of_all_queries"] <= 1.0
    assert summary["goals"]["the bad adapter never became active"] is True
    assert summary["goals"]["no 5xx answer"] is True
