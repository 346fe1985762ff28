"""The Shapes-CIR pilot: its split, the simulated operator over HTTP, and `bench feedback`."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from isacir.adapt import tuning as adapt_tuning
from isacir_lab.shapes.feedback_goals import paired_counts, verdict_intervals
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
    # the adapters train with another seed than the world's (`bench feedback --adapt-seed 1`)
    run_settings = replace(settings, refit=True, folds=2, seed=1)
    summary = run_feedback_bench(out, 0, pilot, run_settings, (20, 60), config=cfg, **quiet)
    versions = run_pilot_versions(out, 0, PilotConfig(queries=40, distractors=40), settings, config=cfg, **quiet)
    return out, cfg, bench, summary, versions


@pytest.mark.slow
def test_bench_feedback_on_the_small_bench(small_loop):
    """The whole loop on the scaled-down bench: pilot over HTTP, adapters, test before and after."""
    from isacir_lab.shapes.bench import METRICS

    out, cfg, bench, summary, _ = small_loop
    assert set(summary) == {"seed", "before", "after", "curve", "known_phrasings", "unseen_phrasings", "flip_rate"}
    for block in (summary["before"], summary["after"], *summary["curve"].values()):
        assert set(block) == set(METRICS)
    # "before" is the plain ISA encoder: exactly the bench's own row
    assert summary["before"] == bench["methods"]["isa"]
    assert summary["curve"]["60"] == summary["after"]
    # another training seed than the world's names its results apart from the run of record
    assert not (out / "feedback-seed0.json").exists()
    detail = json.loads((out / "feedback-seed0-adapt1.json").read_text())
    assert detail["settings"]["seed"] == 1 and detail["seed"] == 0
    pilot = detail["pilot"]
    assert pilot["queries"] == 60 and pilot["confirmed"] + pilot["corrected"] == 60
    # the unseen-phrasing subset: every test query in a phrasing the pilot left out
    world = out / "worlds" / cfg.world.key()
    anns = json.loads((world / "annotations" / "test.json").read_text())
    left_out = sum(
        parse_modifier(a["shared_concept"], a["relative_caption"])[1] == LEFT_OUT[a["shared_concept"]] for a in anns
    )
    assert detail["unseen_phrasings_queries"] == left_out > 0
    # the intervals turn the stored rates back into counts of the test queries
    assert detail["test_queries"] == len(anns)
    # which CPU made the numbers: another model differs in the last float bits of every training
    assert detail["cpu"]["model"] and detail["cpu"]["logical_cpus"] == os.cpu_count()
    served = {"R@1": summary["after"]["R@1"], "flip_rate": summary["flip_rate"] or 0.0}
    right, gained, lost = paired_counts(detail["before"]["R@1"], served["R@1"], served["flip_rate"], len(anns))
    assert gained - lost == round((summary["after"]["R@1"] - summary["before"]["R@1"]) * len(anns) / 100)

    def is_rate(x: float | None) -> bool:
        """A flip rate: a share of the top-1 hits before, or None where there were none."""
        return x is None if not right else x is not None and 0.0 <= x <= 1.0

    assert is_rate(summary["flip_rate"])
    # 60 test queries may have no top-1 hit before (it depends on the CPU's last float bits); then
    # the flip rate has no interval, and saying so beats an interval of nothing
    if right:
        v = verdict_intervals(detail["before"], served, len(anns))
        assert (v["r1_gain"]["gained"], v["r1_gain"]["lost"]) == (gained, lost)
    else:
        with pytest.raises(ValueError, match="flip rate is undefined"):
            verdict_intervals(detail["before"], served, len(anns))
    assert (out / "feedback-seed0-adapt1.png").stat().st_size > 5000
    # the log holds what the operator did: every query judged, corrections after three rejections
    db = next((out / "feedback").glob("seed0-*/feedback.sqlite"))
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM queries").fetchone()[0] == 60
        assert con.execute("SELECT COUNT(DISTINCT query_id) FROM feedback").fetchone()[0] == 60
        corrected = con.execute("SELECT query_id FROM feedback WHERE verdict = 'corrected'").fetchall()
        for (qid,) in corrected:
            n = con.execute(
                "SELECT COUNT(*) FROM feedback WHERE query_id = ? AND verdict = 'rejected'", (qid,)
            ).fetchone()[0]
            assert n == 3
        assert con.execute("SELECT COUNT(*) FROM queries WHERE tokens IS NULL").fetchone()[0] == 0
    assert detail["adapters"]["60"]["counts"]["train"] + detail["adapters"]["60"]["counts"]["holdout"] == 60
    # the trade-off at interpolation 1 is the final adapter itself, reloaded from its folder
    full = detail["interpolation_tradeoff"]["1.0"]
    assert (full["R@1"], full["R@10"], full["flip_rate"]) == (
        summary["after"]["R@1"],
        summary["after"]["R@10"],
        summary["flip_rate"],
    )
    assert set(detail["interpolation_tradeoff"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert is_rate(detail["flip_rate_int4_payload"])
    # the top-1 guard keeps either the zero-shot first place or the adapter's: it can only undo flips
    guarded = detail["guarded_tradeoff"]
    assert len(guarded) == 9
    for g in guarded.values():
        unguarded = detail["interpolation_tradeoff"][str(g["interpolation"])]
        if unguarded["flip_rate"] is not None:
            assert g["flip_rate"] <= unguarded["flip_rate"]
    # what `adapt --tune` would serve: a pair of the grid, chosen on held-out feedback only
    tuned = detail["tuned_on_held_out"]
    assert tuned["interpolation"] in (0.25, 0.5, 0.75, 1.0) and is_rate(tuned["flip_rate"])
    if tuned["held_out"] is not None:
        assert (tuned["interpolation"], tuned["guard_margin"]) == (
            tuned["held_out"]["interpolation"],
            tuned["held_out"]["guard_margin"],
        )
        assert tuned["held_out"]["hit@1"] >= tuned["held_out_before"]["hit@1"]
    # --refit: the same pair, trained again on all 60 queries; the curve's adapters were not refit
    refit = detail["tuned_then_refit"]
    assert (refit["interpolation"], refit["guard_margin"]) == (tuned["interpolation"], tuned["guard_margin"])
    assert refit["trained_on"] == 60 and is_rate(refit["flip_rate"])
    report = json.loads(next((out / "feedback").glob("seed0-*/adapter-refit/report.json")).read_text())
    assert report["counts"]["train"] == 60 and report["counts"]["holdout"] == 0
    assert report["settings"]["seed"] == 1  # the training seed reached the adapters themselves
    assert all("refit" not in a["counts"] for a in detail["adapters"].values())
    assert all("folds" not in a["counts"] for a in detail["adapters"].values())  # the curve is one hold-out
    # --folds 2: the pair chosen on counts pooled over all 60 queries, trained on all of them
    cv = detail["tuned_by_folds"]
    assert cv["folds"] == 2 and cv["trained_on"] == 60 and cv["held_out_before"]["n"] == 60
    if cv["held_out"] is not None:
        assert (cv["interpolation"], cv["guard_margin"]) == (
            cv["held_out"]["interpolation"],
            cv["held_out"]["guard_margin"],
        )
    # the grid the folds weighed is recorded whole, on the folds' own margins, the chosen pair in it
    weighed = [(g["interpolation"], g["guard_margin"]) for g in cv["grid"]]
    assert sorted(weighed) == sorted(adapt_tuning._tune_pairs(folds=True)) and len(set(weighed)) == len(weighed)
    assert cv["held_out"] is None or cv["held_out"] in cv["grid"]
    cv_report = json.loads(next((out / "feedback").glob("seed0-*/adapter-folds/report.json")).read_text())
    assert cv_report["tuning"]["grid"] == cv["grid"]
    assert cv_report["counts"]["folds"] == 2 and cv_report["counts"]["train"] == 60
    assert sum(s["holdout"] for s in cv_report["cross_validation"]["sizes"]) == 60
    # the moonshot's yardstick, computed here, equals the one `bench shapes` wrote for this cache
    shapes = json.loads((out / "results-seed0.json").read_text())
    oracle = shapes["oracles"]["oracle_reference_caption_plus_modifier"]
    assert detail["oracle_reference_caption_plus_modifier"] == oracle


def test_results_of_another_training_seed_are_named_apart():
    from isacir.adapt import AdaptSettings
    from isacir_lab.shapes.bench import ShapesBenchConfig
    from isacir_lab.shapes.feedback_bench import FeedbackRun
    from isacir_lab.shapes.pilot import PilotConfig

    assert FeedbackRun(0).stem == FeedbackRun(0, 0).stem == "feedback-seed0"
    assert FeedbackRun(3, 1).stem == "feedback-seed3-adapt1"
    assert FeedbackRun(3, 3, query_head=True).stem == "feedback-seed3-head"
    assert FeedbackRun(3, 1, query_head=True).replicates_stem == "feedback-seed3-adapt1-head-replicates"
    assert FeedbackRun(3, 1, lora_attention=True).stem == "feedback-seed3-adapt1-attn"
    # the settings a bench trains with name its run; those that do not set a run apart leave it alone
    settings = AdaptSettings(seed=3, lora_rank=4, lora_attention=True, folds=5)
    assert FeedbackRun.of(3, settings) == FeedbackRun(3, lora_attention=True)
    assert FeedbackRun.of(0, AdaptSettings(seed=0, steps=7)) == FeedbackRun(0)
    # the flags that select a variant are the bench's own options
    assert FeedbackRun(3, 1, True, True, 3).flags() == " --adapt-seed 1 --lora-attention --query-head --soup 3"
    assert FeedbackRun(3, 1, True, True, 3).stem == "feedback-seed3-adapt1-attn-head-soup3"
    assert FeedbackRun.of(3, AdaptSettings(seed=3, soup=3)) == FeedbackRun(3, soup=3) != FeedbackRun(3)
    assert FeedbackRun(3, 3).flags() == ""
    # their pilot logs and adapters too: one variant's run never deletes another's folder
    world, pilot = ShapesBenchConfig(seed=3).world, PilotConfig()
    runs = [FeedbackRun(3, a, t, h) for a in (None, 1) for h in (False, True) for t in (False, True)]
    dirs = {r.folder(Path("o"), pilot, world) for r in runs}
    assert len(dirs) == 8 and FeedbackRun(3, 3).folder(Path("o"), pilot, world) in dirs
    assert {d.name.split("-")[0] for d in dirs} == {"seed3"} and all(d.parent == Path("o/feedback") for d in dirs)


def test_a_missing_run_names_the_command_that_trains_it_again(tmp_path):
    """`bench replicates` on a run whose adapters are gone says which `bench feedback` to run; the
    command is built from the run's settings, and for the recorded runs it is the one the docs show."""
    from isacir.errors import IsacirError
    from isacir_lab.shapes.replicates import _served_adapters, rerun_command

    root = Path(__file__).resolve().parents[1]
    docs = " ".join(p.read_text() for p in (root / "docs").rglob("*.md"))
    results = root / "docs" / "results"
    for name in (
        "reruns/feedback-lora4-seed0-epyc.json",
        "training-seeds/feedback-lora4-seed0-adapt1-epyc.json",
        "variants/feedback-lora4-head-seed0-epyc.json",
        "variants/feedback-lora4-attn-soup3-seed0-epyc.json",
    ):
        run = json.loads((results / name).read_text())
        assert rerun_command(Path("runs/shapes"), run) + " --json" in docs, name
    run = json.loads((results / "variants/feedback-lora4-head-seed0-epyc.json").read_text())
    run["seed"] = 3
    run["settings"] = {**run["settings"], "steps": 50, "lora_rank": 2, "lora_attention": True, "soup": 3}
    run["pilot_config"] = {**run["pilot_config"], "queries": 60}
    want = "isacir-lab bench feedback --seed 3 --out o --queries 60 --steps 50 --lora-rank 2 --lora-attention"
    want += " --query-head --refit --folds 5 --soup 3"
    want += " --adapt-seed 0"
    assert rerun_command(Path("o"), run) == want
    with pytest.raises(IsacirError, match=f"adapter-1000 is missing: train the run's adapters again with {want}"):
        _served_adapters(tmp_path / "gone", run, Path("o"))


@pytest.mark.slow
def test_pilot_of_two_versions_on_the_small_bench(small_loop):
    out, _, _, _, result = small_loop
    first, second = result["halves"]
    assert "+" not in first["version"] and second["version"].startswith(first["version"] + "+")
    assert first["queries"] == second["queries"] == 20
    versions = {g["key"]: g for g in result["versions"]}
    assert set(versions) == {first["version"], second["version"]}
    assert all(g["queries"] == 20 and g["judged"] == 20 for g in versions.values())
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
    import os
    import shutil
    from pathlib import Path

    from playwright.sync_api import expect, sync_playwright
    from serve_helpers import start_server

    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app

    chromium = os.environ.get("ISACIR_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            raise RuntimeError(f"Chromium not found at {chromium}: .ci/run must install Debian's chromium")
        pytest.skip(f"no Chromium at {chromium} (apt-get install chromium)")
    out, _, _, _, result = small_loop
    paths = json.loads(next((out / "pilots").glob("*/pilot-run.json")).read_text())
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd)
    settings = ServeSettings(api_keys=("k",), feedback_db=out / "pilot-versions-seed0" / "feedback.sqlite")
    server = start_server(create_app(ServiceState(Gallery.open(paths["gallery"]), fnd, qe, settings)))
    artifacts = Path(
        os.environ.get("ISACIR_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts")
    )
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
            expect(page.locator("#status")).to_contain_text("40 queries, 40 judged, 2 version(s)")
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
    # the standard world's key is the one it had before variants existed
    legacy = {k: v for k, v in asdict(SMALL_WORLD).items() if k != "variant"}
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


def test_a_replicate_is_another_draw_of_the_test_split(split, tmp_path):
    """Built as the test split is (queries, phrasings, hard negatives, distractors), from streams
    of its own: no image of the test gallery or of another replicate is re-drawn but by chance."""
    from isacir_lab.shapes.world import generate_replicate

    world, _ = split
    one = generate_replicate(tmp_path / "1", SMALL_WORLD, 1)
    two = generate_replicate(tmp_path / "2", SMALL_WORLD, 2)

    def pixels(folder):
        return [Image.open(p).tobytes() for p in sorted((folder / "unlabeled2017").iterdir())]

    test_anns = json.loads((world / "annotations" / "test.json").read_text())
    test_gallery = len(json.loads((world / "annotations" / "image_info_unlabeled2017.json").read_text())["images"])
    seen = set(pixels(world))
    for rep in (one, two):
        anns = json.loads((rep / "annotations" / "test.json").read_text())
        assert len(anns) == len(test_anns) == SMALL_WORLD.test_queries
        assert anns != test_anns
        for a in anns:
            kind = a["shared_concept"]
            assert parse_modifier(kind, a["relative_caption"])[1] in PHRASES[kind]["test"]
            assert a["reference_img_id"] not in a["gt_img_ids"] and a["target_img_id"] in a["gt_img_ids"]
        images = json.loads((rep / "annotations" / "image_info_unlabeled2017.json").read_text())["images"]
        # each query brings its reference, its target and 2 or 3 hard negatives; then the distractors
        assert len(images) - SMALL_WORLD.distractors in range(4 * len(anns), 5 * len(anns) + 1)
        assert abs(len(images) - test_gallery) <= 2 * len(anns)
        mine = pixels(rep)
        assert sum(px in seen for px in mine) <= len(mine) // 50  # chance repeats only
        seen |= set(mine)
    # cached by key, and deterministic: the same index draws the same split again
    stamp = (one / "replicate.json").stat().st_mtime_ns
    assert generate_replicate(one, SMALL_WORLD, 1) == one and (one / "replicate.json").stat().st_mtime_ns == stamp
    again = generate_replicate(tmp_path / "again", SMALL_WORLD, 1)
    assert (again / "annotations" / "test.json").read_text() == (one / "annotations" / "test.json").read_text()
    assert pixels(again) == pixels(one)
    # a crash leaves a .partial folder behind: the next call builds over it and swaps it in whole
    (tmp_path / "3.partial" / "unlabeled2017").mkdir(parents=True)
    (tmp_path / "3.partial" / "unlabeled2017" / "stale.png").write_bytes(b"left by a killed run")
    three = generate_replicate(tmp_path / "3", SMALL_WORLD, 3)
    assert (three / "replicate.json").is_file() and not (tmp_path / "3.partial").exists()
    with pytest.raises(ValueError, match="at least 1"):
        generate_replicate(tmp_path / "0", SMALL_WORLD, 0)


@pytest.mark.slow
def test_replicates_judge_the_runs_served_adapters_again(small_loop):
    """`bench replicates` on the small loop's run: the served adapters of its JSON, on fresh draws
    of the test split, pooled by counting queries (checked against each replicate's own metrics)."""
    from conftest import assert_replicates_add_up

    from isacir.adapter import QueryAdapter
    from isacir.errors import IsacirError
    from isacir_lab.shapes.feedback_bench import FeedbackRun
    from isacir_lab.shapes.replicates import RECIPES, _served_adapters, run_replicates

    out, cfg, _, _, _ = small_loop
    quiet = {"progress": False, "log": lambda *_: None}
    summary = run_replicates(out, FeedbackRun(0, 1), 2, config=cfg, frontier="tuned_then_refit", **quiet)
    detail = json.loads((out / "feedback-seed0-adapt1-replicates.json").read_text())
    run = json.loads((out / "feedback-seed0-adapt1.json").read_text())
    n = cfg.world.test_queries
    assert summary["queries"] == detail["queries"] == 2 * n and detail["replicates"] == 2
    pooled = detail["pooled"]
    # the run judged again is named with its recipe and the adapters it served
    assert detail["bench"] == "feedback-seed0-adapt1.json" and detail["settings"] == run["settings"]
    assert detail["run_fingerprint"] == run["adapters"]["60"]["fingerprint"]
    folder = next((out / "feedback").glob("seed0-*"))
    refit = QueryAdapter.from_pretrained(folder / "adapter-refit")
    assert detail["adapters"]["tuned_then_refit"] == refit.fingerprint
    # pooled by counting queries = the replicates' own numbers, and judged on them
    assert_replicates_add_up(detail)
    assert set(RECIPES) == {k for k in pooled if k not in ("before", "known_phrasings_before")}
    for name in RECIPES:
        # the adapters served are the run's own, at the pair its JSON records
        assert (pooled[name]["interpolation"], pooled[name]["guard_margin"]) == (
            run[name]["interpolation"],
            run[name]["guard_margin"],
        )
    assert summary["tuned_then_refit"]["R@1"] == pooled["tuned_then_refit"]["R@1"]
    assert_frontier_counts_as_served(out, cfg, folder / "adapter-refit", detail, summary)
    # an adapter folder from another run than the JSON describes is refused, naming both
    stale = {**run, "adapters": {**run["adapters"], "60": {**run["adapters"]["60"], "fingerprint": "0" * 16}}}
    with pytest.raises(IsacirError, match="0000000000000000.*another run"):
        _served_adapters(folder, stale)
    with pytest.raises(IsacirError, match="no bench feedback run"):
        run_replicates(out, FeedbackRun(0, 7), 1, config=cfg, **quiet)
    with pytest.raises(IsacirError, match="--count must be at least 1"):
        run_replicates(out, FeedbackRun(0, 1), 0, config=cfg, **quiet)
    with pytest.raises(IsacirError, match="--frontier must name a served recipe"):
        run_replicates(out, FeedbackRun(0, 1), 1, config=cfg, frontier="adapter-refit", **quiet)


def assert_frontier_counts_as_served(out, cfg, folder, detail, summary):
    """The frontier's grid against the served evaluation (the guard on full rankings, composed per
    pair), counted over the same replicates; its best and largest cells against the grid."""
    from isacir.adapter import QueryAdapter
    from isacir_lab.shapes.bench import cached_isa
    from isacir_lab.shapes.feedback_bench import _TestSet
    from isacir_lab.shapes.feedback_goals import MAX_TEST_FLIP_RATE, MIN_R1_GAIN
    from isacir_lab.shapes.replicates import FRONTIER_INTERPOLATIONS, FRONTIER_MARGINS
    from isacir_lab.shapes.world import generate_replicate

    front = detail["frontier"]
    assert front["recipe"] == "tuned_then_refit"
    grid = {(g["interpolation"], g["guard_margin"]): g for g in front["grid"]}
    assert set(grid) == {(a, m) for a in FRONTIER_INTERPOLATIONS for m in FRONTIER_MARGINS}
    _, fnd, _, qe = cached_isa(out, cfg, lambda *_: None, False)
    root = out / "worlds" / f"{cfg.world.key()}.replicates"
    cells = [(1.0, 0.0), (0.75, 0.02), (0.5, 0.06)]
    right = {c: 0 for c in cells}
    flips = {c: 0 for c in cells}
    had = 0
    for index in range(1, detail["replicates"] + 1):
        test = _TestSet(generate_replicate(root / str(index), cfg.world, index), fnd, qe, cfg.template, False)
        _, before = test.evaluate(None)
        first = [bool(set(r[:1]) & set(q.targets)) for q, r in zip(test.bench.queries, before, strict=True)]
        had += sum(first)
        for a, m in cells:
            _, after = test.evaluate(QueryAdapter.from_pretrained(folder, interpolation=a, guard_margin=m))
            hit = [bool(set(r[:1]) & set(q.targets)) for q, r in zip(test.bench.queries, after, strict=True)]
            right[(a, m)] += sum(hit)
            flips[(a, m)] += sum(f and not h for f, h in zip(first, hit, strict=True))
    n = detail["queries"]
    for cell in cells:
        g = grid[cell]
        assert (g["flips"], g["right_before"]) == (flips[cell], had)
        assert g["R@1"] == round(100 * right[cell] / n, 2)
        assert abs(g["R@1_gain"] - 100 * (right[cell] - had) / n) < 0.006
    # a wider margin keeps the zero-shot first place on more queries, so it never flips more
    for a in FRONTIER_INTERPOLATIONS:
        lost = [grid[(a, m)]["flips"] for m in FRONTIER_MARGINS]
        assert lost == sorted(lost, reverse=True)
    within = [g for g in front["grid"] if g["flip_rate"] is not None and g["flip_rate"] <= MAX_TEST_FLIP_RATE]
    best = front["best_within_flip_goal"]
    assert (best is None) == (not within)
    if best is not None:
        assert best in within and best["R@1"] == max(g["R@1"] for g in within)
    assert front["largest_gain"]["R@1"] == max(g["R@1"] for g in front["grid"])
    assert front["gain_goal_within_flip_goal"] == (best is not None and best["R@1_gain"] >= MIN_R1_GAIN)
    assert summary["frontier"]["best_within_flip_goal"] == best
