"""The Shapes-CIR generator: deterministic, honest splits, correct ground truth, CIRCO layout."""

import json

import pytest

from isacir.evaluation import evaluate, load_circo
from isacir_lab.shapes.world import PHRASES, ShapesConfig, generate, make_edit, random_scene

pytestmark = pytest.mark.lab

SMALL = dict(train_images=30, caption_pairs=300, test_queries=40, distractors=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes") / "w", ShapesConfig(seed=3, **SMALL))


def test_deterministic_by_seed(tmp_path, world):
    again = generate(tmp_path / "again", ShapesConfig(seed=3, **SMALL))
    for rel in ("annotations/test.json", "foundation_captions.json", "annotations/image_info_unlabeled2017.json"):
        assert (again / rel).read_text() == (world / rel).read_text()
    for name in ("unlabeled2017/000001000005.png", "train/000007.png", "foundation/000011.png"):
        assert (again / name).read_bytes() == (world / name).read_bytes()
    other = generate(tmp_path / "other", ShapesConfig(seed=4, **SMALL))
    assert (other / "annotations/test.json").read_text() != (world / "annotations/test.json").read_text()


def _realisations(template: str) -> list[str]:
    """Every concrete string a template can produce (or its fixed prefix when the value ends it)."""
    from isacir_lab.shapes.world import CELLS, COLOURS, COMPARATIVE, SHAPES, SIZES

    if template.endswith("{value}") and "{comparative}" not in template:
        return [template[: -len("{value}")]]
    values = list(COLOURS) + list(SHAPES) + list(SIZES) + list(CELLS)
    out = set()
    for v in values:
        for c in COMPARATIVE.values():
            out.add(template.format(value=v, comparative=c))
    return sorted(out)


def test_test_phrasings_are_held_out_from_foundation_captions(world):
    captions = [c["caption"] for c in json.loads((world / "foundation_captions.json").read_text())]
    assert sum(", " in c and ": " in c or "add a" in c for c in captions) > 10  # edit-style captions exist
    for sets in PHRASES.values():
        assert not set(sets["train"]) & set(sets["test"])
        for template in sets["test"]:
            for phrase in _realisations(template):
                hits = [c for c in captions if phrase in c]
                assert not hits, (template, phrase, hits[:1])
    queries = json.loads((world / "annotations/test.json").read_text())
    train_phrases = [p for s in PHRASES.values() for t in s["train"] for p in _realisations(t)]
    for q in queries:
        text = q["relative_caption"].split(": ", 1)[-1]
        assert not any(text.startswith(p) or text == p for p in train_phrases), text


def test_ground_truth_and_hard_negatives(world):
    bench = load_circo(world, "test")
    assert bench.labelled and len(bench.queries) == 40
    anns = json.loads((world / "annotations/test.json").read_text())
    for a in anns:
        assert a["target_img_id"] in a["gt_img_ids"] and a["reference_img_id"] not in a["gt_img_ids"]
    kinds = {a["shared_concept"] for a in anns}
    assert kinds <= set(PHRASES) and len(kinds) >= 4


def test_edits_change_exactly_what_they_say():
    import random

    rng = random.Random(0)
    for _ in range(300):
        ref = random_scene(rng)
        edit = make_edit(rng, ref, "test")
        if edit is None:
            continue
        kind, text, target, negs = edit
        assert target.key() != ref.key()
        assert all(n.key() != target.key() for n in negs)  # hard negatives are never correct answers
        if kind == "add":
            assert len(target.objects) == len(ref.objects) + 1
        elif kind == "remove":
            assert len(target.objects) == len(ref.objects) - 1
        else:
            assert len(target.objects) == len(ref.objects)
            changed = [(a, b) for a, b in zip(ref.objects, target.objects, strict=True) if a != b]
            assert len(changed) == 1
            field = {"colour": "colour", "shape": "shape", "size": "size", "move": "cell"}[kind]
            a, b = changed[0]
            assert getattr(a, field) != getattr(b, field)


def test_baselines_run_through_the_circo_path(world, openclip_fnd):
    bench = load_circo(world, "test")
    pixel, _ = evaluate(bench, openclip_fnd, mode="pixel_only", progress=False)
    image, _ = evaluate(bench, openclip_fnd, mode="image_only", progress=False)
    for m in (pixel, image):
        assert set(m) >= {"R@1", "R@5", "R@10", "R@50", "mAP@10"} and all(0 <= v <= 100 for v in m.values())


def test_shapes_foundation_loads_through_the_ordinary_path(world, tmp_path):
    import torch

    from isacir.foundation import create_foundation
    from isacir_lab.shapes.foundation import create_untrained, train_foundation

    name = create_untrained(world, tmp_path / "untrained")
    assert name.startswith("openclip:shapes-clip@")
    fnd = create_foundation(name)
    assert fnd._fast_text and fnd.tokenizer.eos == [fnd.token_embedding.num_embeddings - 1]  # argmax pooling
    with torch.no_grad():
        spliced = fnd.encode_composed(fnd.embed_words("large red circle").unsqueeze(0), ["move it to the top left"])
        plain = fnd.encode_text(["a photo of large red circle that move it to the top left"])
    assert torch.allclose(spliced, plain, atol=1e-5)
    trained_name = train_foundation(
        world, tmp_path / "trained", steps=6, batch_size=32, progress=False, log=lambda m: None
    )
    trained = create_foundation(trained_name)
    assert trained.fingerprint != fnd.fingerprint and trained.word_dim == fnd.word_dim
