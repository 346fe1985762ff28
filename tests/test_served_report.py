"""The served adapter's report on the evaluation stream, on a hand-computed case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isacir_lab.shapes.evaluation import Judged, overlap_report, served_report
from isacir_lab.shapes.feedback_goals import served_goals
from isacir_lab.shapes.phrasing import used_phrasings

pytestmark = pytest.mark.lab


def _judged() -> Judged:
    j = Judged()
    j.kind = ["colour", "colour", "colour", "move", "move", "shape"]
    j.phrasing = ["now in {value}", "now in {value}", "recolour it {value}", "shift it to the {value}"] + [
        "shift it to the {value}",
        "swap it for a {value}",
    ]
    j.modifier = ["now in red", "now in blue", "recolour it red", "shift it to the top", "shift it to the left"] + [
        "swap it for a star"
    ]
    a, b = ((("circle", "red", "large", 0),), (("star", "blue", "small", 4),))
    j.target_objects = [a, b, a, b, a, b]
    j.ref_objects = [b, b, b, b, b, a]
    j.add("before@1", [1, 1, 0, 0, 1, 0])
    j.add("after@1", [1, 0, 1, 1, 1, 0])
    j.add("before@10", [1, 1, 1, 0, 1, 0])
    j.add("after@10", [1, 1, 1, 1, 1, 1])
    j.add("known_before@10", [1, 1, 1, 1, 0, 0])
    j.add("known_after@10", [1, 1, 1, 1, 1, 0])
    j.add("oracle@1", [1, 1, 1, 0, 0, 0])
    return j


def test_served_report_counts_by_hand():
    used = {("colour", "now in {value}"), ("move", "shift it to the {value}")}
    r = served_report(_judged(), used)
    assert r["queries"] == 6
    assert r["before"] == {"R@1": 50.0, "R@10": 66.67} and r["after"] == {"R@1": 66.67, "R@10": 100.0}
    # three right at rank 1 before; query 1 lost it: one flip in three
    assert (r["flips"], r["right_before"], r["flip_rate"]) == (1, 3, 33.33)
    lo, hi = r["flip_ci"]
    assert lo < 33.33 < hi and hi - lo > 40  # three queries decide very little
    assert r["R@1_change"]["points"] == 16.67
    lo, hi = r["R@1_change"]["ci"]
    assert lo < 16.67 < hi
    used_part, unseen = r["phrasings"]["used"], r["phrasings"]["unseen"]
    # used: queries 0, 1, 3, 4; unseen: 2 (recolour) and 5 (swap)
    assert (used_part["n"], unseen["n"]) == (4, 2)
    assert used_part["before"]["R@1"] == 75.0 and used_part["after"]["R@1"] == 75.0
    assert unseen["before"]["R@1"] == 0.0 and unseen["after"]["R@1"] == 50.0
    assert r["per_edit"]["colour"]["n"] == 3 and r["per_edit"]["colour"]["after"]["R@1"] == 66.67
    assert r["per_edit"]["shape"] == {
        "before": {"R@1": 0.0, "R@10": 0.0},
        "after": {"R@1": 0.0, "R@10": 100.0},
        "R@1_change": {"points": 0.0, "ci": r["per_edit"]["shape"]["R@1_change"]["ci"]},
        "n": 1,
    }
    assert r["known_phrasings"] == {"before": {"R@10": 66.67}, "after": {"R@10": 83.33}}
    assert r["oracle"] == {"R@1": 50.0}
    goals = served_goals(r)
    assert goals["R@1 >= before + 6"] and goals["R@10 >= before + 4"]
    assert not goals["flip rate <= 5 %"] and goals["unseen-phrasings R@1 >= before + 3"]
    assert goals["moonshot: R@1 >= oracle reference caption + modifier"]


def test_overlap_with_the_pilot_by_hand():
    a = (("circle", "red", "large", 0),)
    o = overlap_report(_judged(), {a}, ["now in red", "swap it for a star", "now in red"])
    assert o == {
        "target_object_sets_in_pilot": 50.0,
        "reference_object_sets_in_pilot": 16.67,
        "modifiers_typed_in_pilot": 33.33,
    }


def test_used_phrasings_read_from_what_operators_typed():
    used = used_phrasings(["the red circle: now in blue", "relocate it to the top", "sing"])
    assert ("colour", "now in {value}") in used and ("move", "relocate it to the {value}") in used
    # "make it {value}" is a phrasing of two edit types: its text counts for both
    assert {("colour", "make it {value}"), ("size", "make it {value}")} <= used_phrasings(["make it red"])
    assert used_phrasings(["sing"]) == set()


def test_bench_phrasings_holds_each_phrasing_out_once(tmp_path, openclip_fnd, tiny_openclip_dir, monkeypatch):
    """Leave-one-phrasing-out on a log whose modifiers use three phrasings: the groups are the
    phrasings, each idea answers every held-out query once, and the pooled counts add up."""
    import numpy as np
    from serve_helpers import build_service

    from isacir.edge.payload import encode_payload
    from isacir_lab.shapes import phrasing_folds

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=12)
    state.query_encoder.save_pretrained(tmp_path / "qe")
    rng = np.random.default_rng(5)
    ids = sorted(int(it["id"]) for it in state.gallery.items())
    qe, scale = state.query_encoder, state.foundation.word_embedding_rms()
    wordings = ["the red circle: now in {}", "recolour it {}", "shift it to the {}"]
    values = ["blue", "green", "top", "left", "red"]
    for i in range(30):
        tokens = (rng.standard_normal((qe.num_tokens, qe.word_dim)) * scale).astype(np.float32)
        text = wordings[i % 3].format(values[i % 5])
        shown = [int(x) for x in rng.choice(ids, 5, replace=False)]
        qid = state.feedback.log_query(
            "tokens", text, encode_payload(tokens, state.qe_fingerprint), 5, shown, state.qe_fingerprint,
            state.foundation_fingerprint,
        )  # fmt: skip
        state.feedback.add(qid, int(rng.choice(ids)), "corrected")
    db = state.settings.feedback_db or state.gallery.dir / "feedback.sqlite"
    paths = {
        "foundation": tiny_openclip_dir[0],
        "query_encoder": str(tmp_path / "qe"),
        "gallery": str(state.gallery.dir),
    }
    monkeypatch.setattr(phrasing_folds, "MIN_GROUP", 5)
    ideas = {"vocab": {}, "vocab + word dropout 0.2": {"word_dropout": 0.2}}
    run = db.parent
    summary = phrasing_folds.run_phrasing_folds(run, paths, tmp_path / "out", 0, ideas, steps=4, log=lambda *_: None)
    detail = json.loads((tmp_path / "out" / "phrasings-seed0.json").read_text())
    assert {g: v["n"] for g, v in detail["groups"].items()} == {
        "colour: now in {value}": 10,
        "colour: recolour it {value}": 10,
        "move: shift it to the {value}": 10,
    }
    assert summary["queries"] == 30
    for idea in ideas:
        s = summary[idea]
        assert s["gain"] == pytest.approx(100 * (s["gained"] - s["lost"]) / 30, abs=0.01)
        pooled = sum(detail["groups"][g][idea] * 10 for g in detail["groups"]) / 30
        assert s["hit@1"] == pytest.approx(100 * pooled, abs=0.01)
        assert s["gain_ci"][0] <= s["gain"] <= s["gain_ci"][1]
    assert not (tmp_path / "out" / ".phrasing-folds-checkpoint.pt").exists()


RECORDED = sorted((Path(__file__).resolve().parents[1] / "docs" / "results" / "served").glob("feedback-*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_served_runs_add_up_and_render_as_their_numbers_say(path):
    """Each recorded run: its counts agree with its rates, its goals are the goals of its numbers,
    and the rendered rows show those numbers."""
    from isacir_lab.results.served import ServedRun, served_goals_table, served_table

    raw = json.loads(path.read_text())
    s = raw["served"]
    assert s["flip_rate"] == pytest.approx(100 * s["flips"] / s["right_before"], abs=0.006)
    assert s["phrasings"]["used"]["n"] + s["phrasings"]["unseen"]["n"] == s["queries"]
    assert sum(p["n"] for p in s["per_edit"].values()) == s["queries"]
    assert raw["evaluation"]["queries"] == s["queries"] and raw["verdicts"] == raw["pilot"]["judged"]
    assert raw["goals"] == served_goals(s)
    run = ServedRun.load(path)
    row = next(r for r in served_table([run]).splitlines() if r.startswith(f"| {raw['seed']} |"))
    assert f"{s['before']['R@1']:.1f} → {s['after']['R@1']:.1f}" in row
    assert f"{s['flips']} of {s['right_before']}" in row and f"({s['phrasings']['unseen']['n']})" in row
    goals = served_goals_table([run]).splitlines()[2:]
    assert [g.endswith("| met |") for g in goals] == list(raw["goals"].values())


def test_a_broken_record_names_its_file(tmp_path):
    from isacir_lab.results.records import RecordError
    from isacir_lab.results.served import ServedRun

    bad = tmp_path / "feedback-realistic-seed9.json"
    bad.write_text(json.dumps({"seed": 9, "served": {}}))
    with pytest.raises(RecordError, match="feedback-realistic-seed9.json"):
        ServedRun.load(bad)
