"""The bilingual Shapes-CIR: the same world written in English and Japanese, a lab foundation whose
tokenizer reads both, and ``bench shapes --language`` reporting every method per language."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from isacir_lab.shapes.japanese import PHRASES_JA
from isacir_lab.shapes.world import ShapesConfig, generate

SMALL = ShapesConfig(train_images=6, caption_pairs=240, test_queries=40, distractors=12)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("worlds")
    english = generate(root / "en", SMALL)
    bilingual = generate(root / "ja", replace(SMALL, japanese_fraction=0.5))
    return english, bilingual


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _template_pattern(template: str) -> re.Pattern:
    """A Japanese phrasing as a pattern whose slots match only the world's words: a colour, shape,
    size or cell, or an object named by them; a multi-object modifier may first name the object it
    edits, as a topic (``赤の円は``)."""
    from isacir_lab.shapes import japanese as ja

    def any_of(words) -> str:
        return "(?:" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + ")"

    colour, shape, size, cell = (
        any_of(w) for w in (ja.COLOURS_JA.values(), ja.SHAPES_JA.values(), ja.SIZES_JA.values(), ja.CELLS_JA)
    )
    named = f"{colour}の{shape}"
    value = f"(?:(?:{cell}の)?{size}{named}|{named}|{colour}|{shape}|{size}|{cell})"
    body = re.escape(template).replace(re.escape("{value}"), value)
    body = body.replace(re.escape("{comparative}"), any_of(ja.COMPARATIVE_JA.values()))
    return re.compile(f"(?:{named}は)?{body}")


def _phrasings_matching(kind: str, text: str) -> set[str]:
    return {
        split
        for split, templates in PHRASES_JA[kind].items()
        if any(_template_pattern(t).fullmatch(text) for t in templates)
    }


def test_the_bilingual_world_is_the_english_world_with_japanese_written_beside_it(worlds):
    english, bilingual = worlds
    assert SMALL.key() == replace(SMALL, japanese_fraction=0.0).key()  # English worlds keep their keys
    assert replace(SMALL, japanese_fraction=0.5).key() != SMALL.key()
    # the same scenes, pixel for pixel: only the texts differ
    assert _files(english) == _files(bilingual) and len(_files(english)) > 200
    en = json.loads((english / "annotations" / "test.json").read_text())
    ja = json.loads((bilingual / "annotations" / "test.json").read_text())
    assert [{k: v for k, v in a.items() if not k.endswith("_ja")} for a in ja] == en
    for a in ja:
        text = a["relative_caption_ja"]
        assert text.isascii() is False and " " not in text
        # every Japanese modifier is worded in one of its edit type's held-out phrasings, never a trained one
        assert _phrasings_matching(a["shared_concept"], text) == {"test"}, text
        assert a["reference_caption_ja"] and a["target_caption_ja"]


def test_the_foundation_reads_japanese_in_a_share_of_its_captions_and_only_trained_phrasings(worlds):
    english, bilingual = worlds
    en = [c["caption"] for c in json.loads((english / "foundation_captions.json").read_text())]
    both = [c["caption"] for c in json.loads((bilingual / "foundation_captions.json").read_text())]
    japanese = [c for c in both if not c.isascii()]
    assert 0.35 < len(japanese) / len(both) < 0.65  # half, drawn per caption (240 draws)
    # the captions left in English are the English world's own
    assert all(b == e for b, e in zip(both, en, strict=True) if b.isascii())
    edits = [c.split("、", 1)[1] for c in japanese if "、" in c]
    assert len(edits) > 10
    for text in edits:
        splits = set().union(*(_phrasings_matching(kind, text) for kind in PHRASES_JA))
        assert "train" in splits and "test" not in splits, text


@pytest.fixture(scope="module")
def lab_foundations(worlds, tmp_path_factory):
    from isacir.foundation import create_foundation
    from isacir_lab.shapes.foundation import create_untrained

    english, bilingual = worlds
    root = tmp_path_factory.mktemp("foundations")
    return (
        create_foundation(create_untrained(english, root / "en")),
        create_foundation(create_untrained(bilingual, root / "ja")),
    )


def test_the_lab_tokenizer_reads_both_languages_and_english_as_before(worlds, lab_foundations):
    english_fnd, bilingual_fnd = lab_foundations
    _, bilingual = worlds
    assert english_fnd.languages == ("en",) and bilingual_fnd.languages == ("en", "ja")  # declared in its config
    assert (english_fnd.context_length, bilingual_fnd.context_length) == (40, 80)
    captions = [c["caption"] for c in json.loads((bilingual / "foundation_captions.json").read_text())]
    english_captions = [c for c in captions if c.isascii()]
    # English keeps its ids: Japanese characters sort after every English word in the vocabulary,
    # before [EOS], which takes the largest id in both (CLIP pools there)
    ids_en, _ = english_fnd.tokenizer(english_captions)
    ids_both, _ = bilingual_fnd.tokenizer(english_captions)
    eos_en, eos_both = (f.token_embedding.num_embeddings - 1 for f in lab_foundations)
    assert eos_both > eos_en and (ids_en == eos_en).sum(1).eq(1).all()
    assert torch.equal(ids_both[:, :40].masked_fill(ids_both[:, :40] == eos_both, eos_en), ids_en)
    tok = bilingual_fnd.tokenizer.tokenizer
    anns = json.loads((bilingual / "annotations" / "test.json").read_text())
    texts = [c for c in captions if not c.isascii()] + [a["relative_caption_ja"] for a in anns]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text  # held-out phrasings too: every character has a row
        assert len(ids) == len(text) + 2  # one token per character, between [SOS] and [EOS]


@pytest.mark.parametrize(
    "template,words,modifier",
    [
        ("{}、{}", "左上の大きい赤の円", "青にして"),
        ("{}、{}", "中央の小さい白の四角", ""),
        ("{} , {}", "a large red circle", "make it blue"),
    ],
)
def test_splicing_the_words_own_embeddings_reproduces_the_plain_text(lab_foundations, template, words, modifier):
    _, fnd = lab_foundations
    from isacir.compose import PromptTemplate

    tpl = PromptTemplate.parse(template)
    emb = fnd.embed_words(words).unsqueeze(0)
    with torch.no_grad():
        spliced = fnd.encode_composed(emb, [modifier], template)
        plain = fnd.encode_text([tpl.render(words, modifier)])
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()


def test_japanese_needs_a_bilingual_world_and_a_known_language():
    from isacir_lab.shapes.bench import ShapesBenchConfig

    assert ShapesBenchConfig().world.japanese_fraction == 0 and ShapesBenchConfig().stem == "results-seed0"
    both = ShapesBenchConfig(seed=3, languages=("en", "ja"))
    assert both.world.japanese_fraction == 0.5 and both.stem == "results-seed3-ja50"
    assert both.language_template("ja") == "{}、{}" and both.language_template("en") == both.template
    assert both.foundation_key() != ShapesBenchConfig(seed=3).foundation_key()
    with pytest.raises(ValueError, match="unknown language"):
        ShapesBenchConfig(languages=("fr",))
    with pytest.raises(ValueError, match="within"):
        ShapesConfig(japanese_fraction=1.5)


@pytest.mark.slow
def test_bench_shapes_reports_every_method_per_language(tmp_path):
    """The small bench on the bilingual world: the same method keys and metrics in each language;
    what ignores the modifier scores the same in both, what reads it does not."""
    from isacir_lab.shapes.bench import ShapesBenchConfig, in_language, run_shapes_bench

    small = ShapesBenchConfig.small(seed=0)
    # the layout of the report is under test, not what the methods reach: a few steps of each
    cfg = replace(
        small,
        world=replace(small.world, train_images=64, caption_pairs=400, test_queries=40, distractors=40),
        foundation_steps=30,
        train=small.train.replace(max_steps=30, warmup_steps=5, checkpoint_every=30),
        languages=("en", "ja"),
        methods=("image_only", "text_only", "image_plus_text", "isa"),
    )
    summary = run_shapes_bench(tmp_path, cfg, progress=False, log=lambda *_: None)
    assert set(summary["languages"]) == {"en", "ja"}
    en, ja = (summary["languages"][lang]["methods"] for lang in ("en", "ja"))
    assert set(en) == set(ja) == set(cfg.methods)
    assert all(set(row) == {"R@1", "R@5", "R@10", "R@50", "mAP@10"} for row in [*en.values(), *ja.values()])
    assert en["image_only"] == ja["image_only"]  # the reference alone: no modifier read
    assert en["text_only"] != ja["text_only"]  # the modifier alone: the language matters
    assert set(summary["language_goals"]) == {"isa ja R@10 >= isa en R@10 - 5"}
    detail = json.loads((tmp_path / "results-seed0-ja50.json").read_text())
    assert detail["languages"]["ja"]["oracles"] and detail["languages"]["ja"]["modifier_response"]["isa"]
    markdown = (tmp_path / "results-seed0-ja50.md").read_text()
    assert "modifiers in Japanese" in markdown and "modifiers in English" in markdown
    assert not (tmp_path / "results-seed0.json").exists()  # the English world's record is left alone
    # the docs' table is generated from the record, copied to docs/results as shapes-bilingual-seed{S}.json
    from isacir_lab.results.shapes import bilingual_table, load_bilingual_runs

    records = tmp_path / "records"
    records.mkdir()
    (records / "shapes-bilingual-seed0.json").write_text((tmp_path / "results-seed0-ja50.json").read_text())
    table = bilingual_table(load_bilingual_runs(records))
    isa_row = next(line for line in table.splitlines() if line.startswith("| **isa**"))
    r1, r10 = (f"**{ja['isa'][k]:.1f}**" for k in ("R@1", "R@10"))
    assert isa_row.split(" | ")[2] == r1 and isa_row.split(" | ")[4] == r10  # R@1 ja, R@10 ja columns
    assert "read 50 % of its captions in Japanese" in table and "isa ja R@10 >= isa en R@10 - 5:" in table
    # an English-only world has nothing to read in Japanese
    from isacir.evaluation.benchmarks import load_shapes

    english = generate(tmp_path / "english", SMALL)
    with pytest.raises(ValueError, match="no modifiers in Japanese"):
        in_language(english, load_shapes(english), "ja")
