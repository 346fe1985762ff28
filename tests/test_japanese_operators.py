"""Operators who write Japanese: the lab's wording in both languages, a bilingual pilot, simulated
operators who type Japanese, and ``bench feedback --language ja`` end to end."""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import replace

import pytest
from test_operators import _Edge, _Image
from test_shapes_bilingual import _phrasings_matching

from isacir.errors import IsacirError
from isacir_lab.shapes import japanese as ja
from isacir_lab.shapes.operators import Operator, OperatorConfig
from isacir_lab.shapes.phrasing import (
    known_phrasings_copy,
    parse_any,
    parse_modifier,
    rephrase,
    reword,
    used_phrasings,
)
from isacir_lab.shapes.pilot import (
    LEFT_OUT,
    LEFT_OUT_JA,
    PILOT_PHRASINGS_JA,
    PilotConfig,
    generate_pilot,
    load_pilot,
    simulate_pilot,
)
from isacir_lab.shapes.world import PHRASES, ShapesConfig, draw_edit, modifier_text, random_scene

pytestmark = pytest.mark.lab

SMALL = ShapesConfig(train_images=8, caption_pairs=40, test_queries=40, distractors=20)
BILINGUAL = replace(SMALL, japanese_fraction=0.05)


def _changes(n: int, split: str, seed: int = 0):
    rng = random.Random(seed)
    while n:
        drawn = draw_edit(rng, random_scene(rng, 3), split)
        if drawn is not None:
            n -= 1
            yield drawn[0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_rewording_writes_the_same_edit_in_any_phrasing_of_either_language(split):
    """The world writes a change in any template (``modifier_text``, ``modifier_ja``); reading it
    back and writing it in another template gives exactly what the world writes there, so an
    operator's rewording never changes what is asked for."""
    writers = {"en": (PHRASES, modifier_text), "ja": (ja.PHRASES_JA, ja.modifier_ja)}
    seen = set()
    for change in _changes(400, split):
        for language, (phrases, write) in writers.items():
            for template in phrases[change.kind][split]:
                text = write(change, template)
                selector, found, _ = parse_modifier(change.kind, text, split, language)
                # Japanese slots take listed words only, so each text reads as its own template;
                # English "make it {value}" also reads "make it smaller" (the rewording below holds)
                assert found == template or (language, template) == ("en", "make it {comparative}"), text
                named = change.edited
                if named is None:
                    assert selector == ""
                else:
                    assert selector == (f"{named.colour} {named.shape}" if language == "en" else ja.object_name(named))
                for other in phrases[change.kind]["train"] + phrases[change.kind]["test"]:
                    assert reword(change.kind, text, other, language) == write(change, other)
                seen.add((language, change.kind, change.edited is None))
    assert len(seen) >= 20  # both languages, every edit type, with and without a named object


def test_japanese_modifiers_parse_as_the_independent_pattern_says():
    """Against the bilingual world's own test oracle (a pattern written apart from the lab's
    parser): the phrasing family a Japanese modifier belongs to, for every phrasing."""
    for change in _changes(300, "test", seed=1):
        for split in ("train", "test"):
            for template in ja.PHRASES_JA[change.kind][split]:
                text = ja.modifier_ja(change, template)
                families = {s for s in ("train", "test") if _matches(change.kind, text, s)}
                assert families == _phrasings_matching(change.kind, text), text


def _matches(kind: str, text: str, split: str) -> bool:
    try:
        parse_modifier(kind, text, split, "ja")
        return True
    except ValueError:
        return False


def test_japanese_parsing_is_unambiguous_and_refuses_what_it_cannot_read():
    assert parse_modifier("colour", "今度は青", language="ja") == ("", "今度は{value}", "青")
    assert parse_modifier("colour", "赤の円は今度は青", language="ja") == ("赤の円", "今度は{value}", "青")
    # with no spaces a size word followed by サイズ could read as a comparative: the words are listed
    assert parse_modifier("size", "大きいサイズにして", "train", "ja") == ("", "{value}サイズにして", "大きい")
    assert parse_modifier("size", "もっと小さくお願い", language="ja") == ("", "{comparative}お願い", "小さい")
    assert reword("size", "もっと小さくお願い", "{value}サイズに直して", "ja") == "小さいサイズに直して"
    assert parse_any("move", "左上に移動して", "ja") == ("", "{value}に移動して", "左上")
    for bad in ("the red circle: now in blue", "青い空", "今度は空"):
        with pytest.raises(ValueError, match="'ja'"):
            parse_any("colour", bad, "ja")
    with pytest.raises(ValueError, match="no wording"):
        parse_any("colour", "now in blue", "fr")
    # the used phrasings read both languages; the two never share a template
    assert used_phrasings(["赤の円は今度は青", "now in blue"]) == {
        ("colour", "今度は{value}"),
        ("colour", "now in {value}"),
    }


@pytest.fixture(scope="module")
def pilots(tmp_path_factory):
    out = tmp_path_factory.mktemp("ja-pilot")
    config = PilotConfig(queries=120, distractors=30)
    english = generate_pilot(out / "en", SMALL, config)
    bilingual = generate_pilot(out / "ja", BILINGUAL, config)
    return english, bilingual


def test_the_bilingual_pilot_is_the_english_pilot_with_japanese_written_beside_it(pilots):
    english, bilingual = pilots
    en, both = load_pilot(english), load_pilot(bilingual)
    assert "text_ja" not in en["queries"][0] and both["left_out_ja"] == LEFT_OUT_JA
    # the same scenes and English words: only the Japanese fields are added
    assert [{k: v for k, v in q.items() if not k.endswith("_ja")} for q in both["queries"]] == en["queries"]
    assert sorted(p.name for p in (english / "gallery").iterdir()) == sorted(
        p.name for p in (bilingual / "gallery").iterdir()
    )
    words = {"colour": ja.COLOURS_JA, "shape": ja.SHAPES_JA, "size": ja.SIZES_JA}
    for q in both["queries"]:
        kind, text = q["kind"], q["text_ja"]
        assert _phrasings_matching(kind, text) == {"test"}, text
        selector, template, value = parse_modifier(kind, text, language="ja")
        assert template == q["phrasing_ja"] in PILOT_PHRASINGS_JA[kind] and template != LEFT_OUT_JA[kind]
        # the Japanese modifier asks for the English one's change
        en_selector, _, en_value = parse_modifier(kind, q["text"])
        if kind in words:
            assert value == words[kind][en_value]
        elif kind == "move":
            from isacir_lab.shapes.world import CELLS

            assert value == ja.CELLS_JA[CELLS.index(en_value)]
        assert bool(selector) == bool(en_selector)
    # every Japanese pilot phrasing of the edit types drawn is used
    kinds = {q["kind"] for q in both["queries"]}
    assert {(q["kind"], q["phrasing_ja"]) for q in both["queries"]} == {
        (k, t) for k, ts in PILOT_PHRASINGS_JA.items() for t in ts if k in kinds
    }


class _Service:
    """Shows a fixed list, the target first when the modifier is in a listed phrasing; records calls."""

    def __init__(self, ids, pilot, finds):
        self.ids, self.finds = ids, finds
        self.queries = {q["id"]: q for q in pilot["queries"]}
        self.searches, self.verdicts = [], []

    def post(self, path, body):
        if path == "/v1/feedback":
            self.verdicts.append(body)
            return {}
        q = self.queries[_Edge.current]  # the pilot query whose photo the edge encoded last
        targets = [self.ids[n] for n in q["targets"]]
        others = [i for i in sorted(self.ids.values()) if i not in targets][:10]
        found = parse_any(q["kind"], body["text"], "ja")[1] in self.finds
        shown = targets[:1] + others[:9] if found else others
        self.searches.append({"text": body["text"], "pilot_id": q["id"], "query_id": f"q{len(self.searches)}"})
        return {"query_id": self.searches[-1]["query_id"], "results": [{"id": i} for i in shown]}


def test_japanese_operators_type_japanese_in_their_own_habits(pilots, monkeypatch):
    english, bilingual = pilots
    pilot = load_pilot(bilingual)
    ids = {p.relative_to(bilingual).as_posix(): i for i, p in enumerate(sorted((bilingual / "gallery").iterdir()))}
    # found only in the plain Japanese phrasings: every first search misses, a second may find it
    service = _Service(ids, pilot, {t for p in ja.PHRASES_JA.values() for t in p["train"]})
    monkeypatch.setattr("PIL.Image.open", lambda path: _Image(path))
    quiet = {"progress": False, "log": lambda *_: None}
    people = OperatorConfig(seed=3, unjudged=0.0, wrong_confirm=0.0, wrong_reject=0.0)
    stats = simulate_pilot(bilingual, service, _Edge(), ids, operators=people, language="ja", **quiet)
    assert stats["queries"] == 120 and stats["judged"] == 120 and stats["confirmed"] == 0
    by_id = {q["id"]: q for q in pilot["queries"]}
    for s in service.searches:
        q = by_id[s["pilot_id"]]
        selector, template, value = parse_any(q["kind"], s["text"], "ja")
        # the same change as the pilot's Japanese modifier, in the operator's words
        assert (selector, value) == parse_modifier(q["kind"], q["text_ja"], language="ja")[::2]
        if s["text"] == stats["texts"][q["id"]]:
            assert template in PILOT_PHRASINGS_JA[q["kind"]]  # a first search: the pilot's family
    assert 0 < stats["corrected"] == stats["found_again"] < stats["judged"]
    # the operators' language must be in the pilot
    with pytest.raises(IsacirError, match="no modifiers in 'ja'"):
        simulate_pilot(english, service, _Edge(), ids, operators=people, language="ja", **quiet)
    with pytest.raises(IsacirError, match="not 'fr'"):
        simulate_pilot(bilingual, service, _Edge(), ids, operators=people, language="fr", **quiet)
    assert (
        Operator.draw(0, PILOT_PHRASINGS_JA, 0.8, random.Random(0), "ja")
        .word("colour", "赤の円は今度は青", random.Random(0))
        .startswith("赤の円は")
    )


def test_a_bilingual_evaluation_block_and_its_known_phrasings_copy_in_japanese(tmp_path):
    from isacir_lab.shapes.evaluation import generate_evaluation

    english = generate_evaluation(tmp_path / "en", SMALL, 1)
    block = generate_evaluation(tmp_path / "ja", BILINGUAL, 1)
    en = json.loads((english / "annotations" / "test.json").read_text())
    anns = json.loads((block / "annotations" / "test.json").read_text())
    assert [{k: v for k, v in a.items() if not k.endswith("_ja")} for a in anns] == en
    assert all(_phrasings_matching(a["shared_concept"], a["relative_caption_ja"]) == {"test"} for a in anns)
    copy = known_phrasings_copy(block, tmp_path / "known", "ja")
    after = json.loads((copy / "annotations" / "test.json").read_text())
    for a, b in zip(anns, after, strict=True):
        assert b["relative_caption"] == a["relative_caption"]  # the English modifier is left alone
        kind = a["shared_concept"]
        assert _phrasings_matching(kind, b["relative_caption_ja"]) == {"train"}
        assert b["relative_caption_ja"] == rephrase(a, "ja")
        assert (
            parse_modifier(kind, a["relative_caption_ja"], language="ja")[::2]
            == (parse_modifier(kind, b["relative_caption_ja"], "train", "ja")[::2])
        )
    assert set(LEFT_OUT) == set(LEFT_OUT_JA)


@pytest.mark.slow
def test_bench_feedback_with_japanese_operators_on_a_small_bilingual_bench(tmp_path):
    """The loop with operators who write Japanese: their words in the log, the service composing in
    the Japanese template, and the stream and test split judged with their Japanese modifiers."""
    from isacir.adapt import AdaptSettings
    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import evaluate
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder
    from isacir_lab.shapes.bench import ShapesBenchConfig, in_language
    from isacir_lab.shapes.feedback_bench import run_feedback_bench
    from isacir_lab.shapes.feedback_goals import language_goals

    small = ShapesBenchConfig.small(seed=0)
    cfg = replace(
        small,
        world=replace(small.world, train_images=64, caption_pairs=400, test_queries=40, distractors=40),
        foundation_steps=30,
        train=small.train.replace(max_steps=30, warmup_steps=5, checkpoint_every=30),
        languages=("ja",),
        methods=("isa",),
    )
    cfg = replace(cfg, world=replace(cfg.world, japanese_fraction=0.05))
    settings = AdaptSettings.auto(steps=20, batch_size=16, gallery_negatives=32, seed=0, folds=2)
    quiet = {"progress": False, "log": lambda *_: None}
    with pytest.raises(IsacirError, match="bilingual world"):
        run_feedback_bench(tmp_path, 0, config=replace(small, methods=("isa",)), language="ja", **quiet)
    summary = run_feedback_bench(
        tmp_path,
        0,
        PilotConfig(queries=40, distractors=20),
        settings,
        OperatorConfig(seed=0),
        config=cfg,
        eval_blocks=1,
        language="ja",
        **quiet,
    )
    assert summary["language"] == "ja" and summary["japanese_fraction"] == 0.05
    detail = json.loads((tmp_path / "feedback-realistic-seed0-ja5-ja.json").read_text())
    assert detail["goals"] == language_goals(summary["served"])
    assert detail["left_out_phrasings"] == LEFT_OUT_JA
    # the operators typed Japanese: every logged text reads as a Japanese phrasing of its family
    run = next((tmp_path / "feedback").glob("realistic-seed0-ja5-ja-*"))
    with sqlite3.connect(run / "feedback.sqlite") as con:
        logged = [t for (t,) in con.execute("SELECT text FROM queries")]
    assert logged and all(not t.isascii() and " " not in t for t in logged)
    assert all(k in ja.PHRASES_JA and t in ja.PHRASES_JA[k]["test"] + ja.PHRASES_JA[k]["train"]
               for k, t in used_phrasings(logged))  # fmt: skip
    # the served encoder composes in the Japanese template; its tokens are the ISA encoder's
    paths = json.loads(next((tmp_path / "pilots").glob("*/pilot-run.json")).read_text())
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd)
    assert qe.config.template == cfg.language_template("ja") == "{}、{}"
    # "before" on the stream is the product's own evaluation with the Japanese modifiers
    block = next(p for p in (tmp_path / "evaluation").iterdir() if (p / "evaluation.json").is_file())
    metrics, _ = evaluate(
        in_language(block, load_shapes(block), "ja"), fnd, "isa", query_encoder=qe, template="{}、{}", progress=False
    )
    assert summary["served"]["before"]["R@1"] == pytest.approx(metrics["R@1"], abs=0.01)
    world = next((tmp_path / "worlds").iterdir())
    metrics, _ = evaluate(
        in_language(world, load_shapes(world), "ja"), fnd, "isa", query_encoder=qe, template="{}、{}", progress=False
    )
    assert detail["test_split"]["before"]["R@10"] == pytest.approx(metrics["R@10"], abs=0.01)
