"""The Shapes-CIR pilot: its split, the simulated operator over HTTP, and `bench feedback`."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace

import pytest
from PIL import Image

from isacir_lab.shapes.operators import OperatorConfig
from isacir_lab.shapes.phrasing import known_phrasings_copy, parse_modifier, rephrase
from isacir_lab.shapes.pilot import LEFT_OUT, PILOT_PHRASINGS, PilotConfig, generate_pilot, load_pilot
from isacir_lab.shapes.world import PHRASES, ShapesConfig, generate

pytestmark = pytest.mark.lab

SMALL_WORLD = ShapesConfig(train_images=8, caption_pairs=8, test_queries=40, distractors=20)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("pilot")
    world = generate(out / "world", SMALL_WORLD)
    pilot = generate_pilot(out / "pilot", SMALL_WORLD, PilotConfig(queries=120, distractors=30))
    return world, pilot


def test_pilot_split_is_its_own_world(split):
    world, pilot = split
    doc = load_pilot(pilot)
    queries = doc["queries"]
    assert len(queries) == 120
    gallery = sorted(p.name for p in (pilot / "gallery").iterdir())
    refs = {q["reference"] for q in queries}
    assert len(refs) == 120 and all((pilot / r).is_file() for r in refs)
    # references are the user's photos: never in the pilot gallery
    assert not refs & {f"gallery/{n}" for n in gallery}
    # no test image is reused: the pilot's images differ from every test gallery image
    test_pixels = {Image.open(p).tobytes() for p in (world / "unlabeled2017").iterdir()}
    pilot_pixels = [Image.open(pilot / "gallery" / n).tobytes() for n in gallery]
    assert sum(px in test_pixels for px in pilot_pixels) <= len(pilot_pixels) // 50  # chance repeats only
    for q in queries:
        assert q["targets"] and all((pilot / t).is_file() for t in q["targets"])
        # the operators' phrasings: the test family, minus the left-out phrasing of each edit type
        template = parse_modifier(q["kind"], q["text"])[1]
        assert template == q["phrasing"] and template in PHRASES[q["kind"]]["test"]
        assert template != LEFT_OUT[q["kind"]]
    used = {(q["kind"], q["phrasing"]) for q in queries}
    assert used == {(k, t) for k, ts in PILOT_PHRASINGS.items() for t in ts if k in {q["kind"] for q in queries}}


def test_pilot_split_is_cached_and_deterministic(split, tmp_path):
    _, pilot = split
    again = generate_pilot(tmp_path / "pilot", SMALL_WORLD, PilotConfig(queries=120, distractors=30))
    assert load_pilot(again)["queries"] == load_pilot(pilot)["queries"]
    stamp = (pilot / "pilot.json").stat().st_mtime_ns
    generate_pilot(pilot, SMALL_WORLD, PilotConfig(queries=120, distractors=30))
    assert (pilot / "pilot.json").stat().st_mtime_ns == stamp


def test_known_phrasings_copy_rewrites_every_test_modifier(split, tmp_path):
    world, _ = split
    copy = known_phrasings_copy(world, tmp_path / "copy")
    before = json.loads((world / "annotations" / "test.json").read_text())
    after = json.loads((copy / "annotations" / "test.json").read_text())
    assert [a["id"] for a in after] == [a["id"] for a in before]
    for a, b in zip(before, after, strict=True):
        kind = a["shared_concept"]
        selector, _, value = parse_modifier(kind, a["relative_caption"], "test")
        selector2, template, value2 = parse_modifier(kind, b["relative_caption"], "train")
        assert (selector, value) == (selector2, value2) and template in PHRASES[kind]["train"]
        assert b["relative_caption"] == rephrase(a)
    assert (copy / "unlabeled2017").resolve() == (world / "unlabeled2017").resolve()


@pytest.fixture(scope="module")
def small_loop(tmp_path_factory, small_shapes):
    """The scaled-down bench (ISA only, on a copy of the session's cache), then `bench feedback`
    and `bench pilot-versions` on it."""
    from conftest import copy_shapes_cache

    from isacir.adapt import AdaptSettings
    from isacir_lab.shapes.bench import ShapesBenchConfig, run_shapes_bench
    from isacir_lab.shapes.feedback_bench import run_feedback_bench, run_pilot_versions

    out = tmp_path_factory.mktemp("feedback-bench")
    copy_shapes_cache(small_shapes[0], out)
    cfg = replace(ShapesBenchConfig.small(seed=0), methods=("isa",))
    quiet = {"progress": False, "log": lambda *_: None}
    bench = run_shapes_bench(out, cfg, **quiet)
    settings = AdaptSettings(steps=40, batch_size=16, gallery_negatives=64, seed=0)
    pilot = PilotConfig(queries=60, distractors=40)
    # isacir adapt's default recipe choice, on 2 folds; the adapters train with another seed than
    # the world's (`bench feedback --adapt-seed 1`)
    run_settings = AdaptSettings.auto(steps=40, batch_size=16, gallery_negatives=64, seed=1, folds=2)
    operators = OperatorConfig(seed=0)
    summary = run_feedback_bench(
        out, 0, pilot, run_settings, operators, config=cfg, eval_blocks=2, curve=(1000,), **quiet
    )
    versions = run_pilot_versions(out, 0, PilotConfig(queries=40, distractors=40), settings, config=cfg, **quiet)
    return out, cfg, bench, summary, versions


@pytest.mark.slow
def test_bench_feedback_on_the_small_bench(small_loop):
    """The whole loop on the scaled-down bench: realistic operators over HTTP, isacir adapt's default
    on their feedback, the served adapter judged on the evaluation stream and the test split."""
    from isacir.adapter import QueryAdapter
    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import evaluate
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder
    from isacir_lab.shapes.bench import METRICS
    from isacir_lab.shapes.feedback_goals import served_goals
    from isacir_lab.shapes.phrasing import used_phrasings

    out, cfg, bench, summary, _ = small_loop
    assert set(summary) == {"seed", "operators", "verdicts", "served", "overlap", "timings"}
    assert summary["operators"] == "realistic"
    # another training seed than the world's names its results apart
    detail = json.loads((out / "feedback-realistic-seed0-adapt1.json").read_text())
    assert detail["settings"]["seed"] == 1 and detail["settings"]["recipe"] == "auto"
    pilot = detail["pilot"]
    assert (
        pilot["queries"] == 60 and pilot["judged"] + pilot["unjudged"] == 60 == summary["verdicts"] + pilot["unjudged"]
    )
    assert pilot["confirmed"] + pilot["corrected"] + pilot["rejected_only"] == pilot["judged"]
    # the log: one query per search (a miss searches again), none without its tokens
    run = next((out / "feedback").glob("realistic-seed0-adapt1-*"))
    with sqlite3.connect(run / "feedback.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM queries").fetchone()[0] == 60 + pilot["searched_again"]
        assert con.execute("SELECT COUNT(*) FROM queries WHERE tokens IS NULL").fetchone()[0] == 0
        assert (
            con.execute("SELECT COUNT(*) FROM feedback WHERE verdict = 'corrected'").fetchone()[0] == pilot["corrected"]
        )
        logged = [t for (t,) in con.execute("SELECT text FROM queries")]

    # the served adapter is the folder isacir adapt saved, at the pair its folds chose
    served_adapter = QueryAdapter.from_pretrained(run / "adapter")
    assert detail["adapter"]["fingerprint"] == served_adapter.fingerprint
    assert detail["served_pair"] == {
        "interpolation": served_adapter.interpolation,
        "guard_margin": served_adapter.guard_margin,
    }
    assert detail["recipe"]["chosen"] in {"vocab", "lora-attn"}

    # the stream's numbers, again from each block by the product's own evaluation (pooled over two
    # blocks of equal size: their mean)
    paths = json.loads(next((out / "pilots").glob("*/pilot-run.json")).read_text())
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()
    blocks = sorted(p for p in (out / "evaluation").iterdir() if (p / "evaluation.json").is_file())
    assert len(blocks) == 2
    served = summary["served"]
    for arm, adapter in (("before", None), ("after", served_adapter)):
        r1 = []
        for block in blocks:
            metrics, _ = evaluate(
                load_shapes(block), fnd, "isa", query_encoder=qe, template=cfg.template, progress=False, adapter=adapter
            )
            r1.append(metrics["R@1"])
        assert served[arm]["R@1"] == pytest.approx(sum(r1) / 2, abs=0.01)
    assert served["queries"] == 2 * cfg.world.test_queries
    right, flips = served["right_before"], served["flips"]
    if right:
        assert served["flip_rate"] == pytest.approx(100 * flips / right, abs=0.01)
        assert served["flip_ci"][0] <= served["flip_rate"] <= served["flip_ci"][1]
    # used and unseen phrasings: read from what the operators typed; every left-out phrasing unseen
    used = used_phrasings(logged)
    parts = served["phrasings"]
    assert parts["used"]["n"] + parts["unseen"]["n"] == served["queries"]
    anns = [a for b in blocks for a in json.loads((b / "annotations" / "test.json").read_text())]
    unseen = [
        a
        for a in anns
        if (a["shared_concept"], parse_modifier(a["shared_concept"], a["relative_caption"])[1]) not in used
    ]
    assert len(unseen) == parts["unseen"]["n"]
    assert all(
        (a["shared_concept"], LEFT_OUT[a["shared_concept"]]) not in used for a in anns
    )  # the operators never used the left-out phrasings
    assert sum(p["n"] for p in served["per_edit"].values()) == served["queries"]
    for part in (parts["used"], parts["unseen"], *served["per_edit"].values()):
        assert set(part["before"]) == {"R@1", "R@10"} and part["R@1_change"]["ci"][0] <= part["R@1_change"]["points"]
    assert 0 <= summary["overlap"]["modifiers_typed_in_pilot"] <= 100
    assert detail["goals"] == served_goals(served)
    # the test split for reference: "before" is exactly the bench's own row
    assert detail["test_split"]["before"] == bench["methods"]["isa"]
    assert set(detail["test_split"]["after"]) == set(METRICS)
    # a curve point past the log's length learns from all of it: the served adapter again, to the bit
    assert detail["curve"] == {"1000": {"R@1": served["after"]["R@1"], "R@10": served["after"]["R@10"]}}
    assert detail["cpu"]["model"] and detail["cpu"]["logical_cpus"] == os.cpu_count()


@pytest.mark.slow
def test_pilot_of_two_versions_on_the_small_bench(small_loop):
    out, _, _, _, result = small_loop
    first, second = result["halves"]
    assert "+" not in first["version"] and second["version"].startswith(first["version"] + "+")
    assert first["queries"] == second["queries"] == 20
    versions = {g["key"]: g for g in result["versions"]}
    assert set(versions) == {first["version"], second["version"]}
    # each version's log: its 20 searches and the second search of every judged miss, which the
    # operator always judges (a confirmation or rejections); unjudged queries stay unjudged
    for half in (first, second):
        group = versions[half["version"]]
        assert group["queries"] == 20 + half["searched_again"]
        assert group["judged"] == half["judged"] + half["searched_again"]
        assert half["judged"] + half["unjudged"] == 20
    run_dir = out / "pilot-versions-seed0"
    svg = (run_dir / "versions.svg").read_text()
    assert first["version"][:8] in svg and second["version"].split("+")[1][:8] in svg
    assert (run_dir / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_bench_edge_int8_gates_the_int8_model_on_shapes_r10(small_loop, tmp_path):
    """The int8 model's task-level gate: R@K through ONNX Runtime with fp32 and int8 tokens, the
    int8 model written only when both gates hold, and a refusal that still reports every number."""
    from isacir_lab.shapes.bench import METRICS
    from isacir_lab.shapes.edge_bench import run_edge_bench

    out, cfg, bench, _, _ = small_loop
    quiet = {"progress": False, "log": lambda *_: None}
    summary = run_edge_bench(out, 0, config=cfg, **quiet)
    # the torch row is the bench's own ISA evaluation, recomputed
    assert summary["torch"] == bench["methods"]["isa"]
    for row in (summary["fp32"], summary["int8"], *summary["payloads"].values()):
        assert set(row) == set(METRICS)
    # ONNX fp32 runs the same model through NumPy/Pillow preprocessing: at most one query of 60 moves
    assert abs(summary["fp32"]["R@10"] - summary["torch"]["R@10"]) <= 100 / 60 + 0.01
    assert summary["r10_drop"] == round(summary["fp32"]["R@10"] - summary["int8"]["R@10"], 2)
    expect = summary["r10_drop"] <= 1.0 and summary["query_cosine"]["min"] >= 0.99
    assert summary["written"] is expect and (summary["refused"] is None) is expect
    if expect:
        edge = json.loads((out / "edge-seed0" / "edge.json").read_text())
        assert set(edge["files"]) == {"fp32", "int8"} and edge["versions"]["int8"] != edge["versions"]["fp32"]
        assert edge["verification"]["int8"]["quality"]["r10_drop"] == summary["r10_drop"]

    # an unreachable cosine gate refuses, measures the R@10 gate anyway, and writes nothing
    refused = run_edge_bench(out, 0, min_query_cosine=1.5, edge_out=tmp_path / "edge", config=cfg, **quiet)
    assert not refused["written"] and refused["edge"] is None and not (tmp_path / "edge").exists()
    assert "below the required 1.5" in refused["refused"]
    assert refused["int8"] == summary["int8"] and refused["r10_drop"] == summary["r10_drop"]
    detail = json.loads((out / "edge-int8-seed0.json").read_text())
    assert detail["model_bytes"]["int8"] < detail["model_bytes"]["fp32"]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 900}], ids=["phone", "desktop"]
)
def test_dashboard_after_a_simulated_two_version_pilot(small_loop, viewport):
    """/pilot over the simulated pilot's own log: both versions named in the table and the charts."""

    from playwright.sync_api import expect, sync_playwright
    from serve_helpers import ARTIFACTS, chromium_or_skip, start_server

    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app

    chromium = chromium_or_skip()
    out, _, _, _, result = small_loop
    paths = json.loads(next((out / "pilots").glob("*/pilot-run.json")).read_text())
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd)
    settings = ServeSettings(api_keys=("k",), feedback_db=out / "pilot-versions-seed0" / "feedback.sqlite")
    server = start_server(create_app(ServiceState(Gallery.open(paths["gallery"]), fnd, qe, settings)))
    artifacts = ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    name = "phone" if viewport["width"] < 600 else "desktop"
    first, second = (h["version"] for h in result["halves"])
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=viewport)
            page.goto(server.url + "/pilot")
            page.fill("#api-key", "k")
            page.click("#key-save")
            logged = sum(g["queries"] for g in result["versions"])
            judged = sum(g["judged"] for g in result["versions"])
            expect(page.locator("#status")).to_contain_text(f"{logged} queries, {judged} judged, 2 version(s)")
            heads = page.locator("#versions tbody tr th")
            expect(heads).to_have_count(2)
            names = sorted(heads.all_inner_texts())
            assert any(first[:8] in n and "+" not in n for n in names), names
            assert any(second.split("+")[1][:8] in n for n in names), names
            page.wait_for_function(
                "[...document.querySelectorAll('.charts img')].every(i => i.complete && i.naturalWidth > 100)"
            )
            page.screenshot(path=str(artifacts / f"pilot-simulated-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    assert (artifacts / f"pilot-simulated-{name}.png").stat().st_size > 20_000


def test_shifted_world_draws_the_same_scenes_in_another_look(split, tmp_path):
    import hashlib
    from dataclasses import asdict

    import numpy as np

    from isacir_lab.shapes.world import WORLD_FORMAT

    world, _ = split
    # the standard world's key is the one it had before variants and Japanese existed
    legacy = {k: v for k, v in asdict(SMALL_WORLD).items() if k not in ("variant", "japanese_fraction")}
    raw = json.dumps([WORLD_FORMAT, legacy], sort_keys=True).encode()
    assert SMALL_WORLD.key() == hashlib.blake2b(raw, digest_size=6).hexdigest()
    shifted_cfg = replace(SMALL_WORLD, variant="shifted")
    assert shifted_cfg.key() != SMALL_WORLD.key()
    shifted = generate(tmp_path / "shifted", shifted_cfg)
    a = json.loads((world / "annotations" / "test.json").read_text())
    b = json.loads((shifted / "annotations" / "test.json").read_text())
    assert a == b  # the same queries, targets and captions
    for name in ("train/000000.png", f"unlabeled2017/{1_000_000:012d}.png"):
        x = np.asarray(Image.open(world / name), dtype=np.float32)
        y = np.asarray(Image.open(shifted / name), dtype=np.float32)
        assert x.shape == y.shape and np.abs(x - y).mean() > 20  # visibly another look
        assert y[..., 2].mean() < y[..., 0].mean()  # the warm light
    with pytest.raises(ValueError, match="unknown world variant"):
        ShapesConfig(variant="night")


def test_an_evaluation_block_is_another_draw_of_the_test_split(split, tmp_path):
    """Built as the test split is (queries, phrasings, hard negatives, distractors), from streams
    of its own: no image of the test gallery or of another block is re-drawn but by chance; with
    ``avoid``, no query shows an object set the pilot showed."""
    from isacir_lab.shapes.evaluation import generate_evaluation
    from isacir_lab.shapes.pilot import pilot_object_sets

    world, pilot = split
    one = generate_evaluation(tmp_path / "1", SMALL_WORLD, 1)
    two = generate_evaluation(tmp_path / "2", SMALL_WORLD, 2)

    def pixels(folder):
        return [Image.open(p).tobytes() for p in sorted((folder / "unlabeled2017").iterdir())]

    test_anns = json.loads((world / "annotations" / "test.json").read_text())
    test_gallery = len(json.loads((world / "annotations" / "image_info_unlabeled2017.json").read_text())["images"])
    seen = set(pixels(world))
    for block in (one, two):
        anns = json.loads((block / "annotations" / "test.json").read_text())
        assert len(anns) == len(test_anns) == SMALL_WORLD.test_queries
        assert anns != test_anns
        for a in anns:
            kind = a["shared_concept"]
            assert parse_modifier(kind, a["relative_caption"])[1] in PHRASES[kind]["test"]
            assert a["reference_img_id"] not in a["gt_img_ids"] and a["target_img_id"] in a["gt_img_ids"]
        images = json.loads((block / "annotations" / "image_info_unlabeled2017.json").read_text())["images"]
        # each query brings its reference, its target and 2 or 3 hard negatives; then the distractors
        assert len(images) - SMALL_WORLD.distractors in range(4 * len(anns), 5 * len(anns) + 1)
        assert abs(len(images) - test_gallery) <= 2 * len(anns)
        mine = pixels(block)
        assert sum(px in seen for px in mine) <= len(mine) // 50  # chance repeats only
        seen |= set(mine)
        assert len(json.loads((block / "objects.json").read_text())) == len(anns)
    # cached by key, and deterministic: the same index draws the same block again
    stamp = (one / "evaluation.json").stat().st_mtime_ns
    assert generate_evaluation(one, SMALL_WORLD, 1) == one and (one / "evaluation.json").stat().st_mtime_ns == stamp
    again = generate_evaluation(tmp_path / "again", SMALL_WORLD, 1)
    assert (again / "annotations" / "test.json").read_text() == (one / "annotations" / "test.json").read_text()
    assert pixels(again) == pixels(one)
    # avoiding the pilot's object sets: the draw changes, and no reference or target shows one
    avoid = pilot_object_sets(load_pilot(pilot))
    overlap = [o for o in json.loads((one / "objects.json").read_text()) if _key(o["target_objects"]) in avoid]
    assert overlap, "the small pilot shares some object sets with an unconstrained draw"
    novel = generate_evaluation(tmp_path / "novel", SMALL_WORLD, 1, avoid)
    for o in json.loads((novel / "objects.json").read_text()):
        assert _key(o["target_objects"]) not in avoid and _key(o["ref_objects"]) not in avoid
    # a crash leaves a .partial folder behind: the next call builds over it and swaps it in whole
    (tmp_path / "3.partial" / "unlabeled2017").mkdir(parents=True)
    (tmp_path / "3.partial" / "unlabeled2017" / "stale.png").write_bytes(b"left by a killed run")
    three = generate_evaluation(tmp_path / "3", SMALL_WORLD, 3)
    assert (three / "evaluation.json").is_file() and not (tmp_path / "3.partial").exists()
    with pytest.raises(ValueError, match="at least 1"):
        generate_evaluation(tmp_path / "0", SMALL_WORLD, 0)


def test_the_pilot_records_every_object_set_it_showed(split):
    from isacir_lab.shapes.pilot import pilot_object_sets

    _, pilot = split
    doc = load_pilot(pilot)
    sets = pilot_object_sets(doc)
    assert all(_key(q["target_objects"]) in sets for q in doc["queries"])
    # at most one object set per picture shown (references and gallery); pictures repeat sets
    assert len(doc["queries"]) // 2 <= len(sets) <= len(doc["queries"]) + len(list((pilot / "gallery").iterdir()))


def _key(objects) -> tuple:
    return tuple(tuple(o) for o in objects)
