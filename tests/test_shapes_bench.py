"""`isacir-lab bench shapes` and `isacir-lab demo` end to end on the scaled-down configuration.

One session-scoped run trains the tiny foundation and all three methods; the CLI run and the
demo afterwards must reuse every cached stage.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import replace

import pytest
from PIL import Image
from test_cli import last_json, run

from isacir.edge.payload import _HEADER
from isacir_lab.shapes.bench import (
    METHODS,
    METRICS,
    SHAPES_TEMPLATE,
    TRAINED,
    ShapesBenchConfig,
)

pytestmark = pytest.mark.lab


def lab(*args, check=True):
    return run(*args, check=check, cli="isacir_lab.cli")


@pytest.fixture(scope="module")
def bench_run(small_shapes):
    return small_shapes


# Cache keys of the shapes-cir preset at seed 2 (the key derivation of 0.2.0, see CHANGELOG.md).
PINNED_KEYS = {"pic2word": "a5af4d5173a7", "isa_symmetric": "37fb995dd271", "isa": "e4638e403e97"}


def _chance_recall(out, k: int) -> float:
    """Expected R@k of a random ranking: 1 - C(G-g, k) / C(G, k) per query, averaged."""
    detail = json.loads((out / "results-seed0.json").read_text())
    world = out / "worlds" / ShapesBenchConfig.small().world.key()
    anns = json.loads((world / "annotations" / "test.json").read_text())
    g = detail["gallery"] - 1  # the reference is excluded
    return 100 * sum(1 - math.comb(g - len(a["gt_img_ids"]), k) / math.comb(g, k) for a in anns) / len(anns)


@pytest.mark.slow
def test_summary_has_every_method_and_metric(bench_run):
    _, summary, _ = bench_run
    assert summary["seed"] == 0
    assert list(summary["methods"]) == list(METHODS)
    for m in METHODS:
        r = summary["methods"][m]
        assert list(r) == list(METRICS)
        assert all(0 <= v <= 100 for v in r.values())
        assert r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@50"]


@pytest.mark.slow
def test_trained_methods_beat_chance(bench_run):
    out, summary, _ = bench_run
    chance = _chance_recall(out, 10)
    for m in TRAINED:
        assert summary["methods"][m]["R@10"] > 3 * chance, (m, summary["methods"][m], chance)


@pytest.mark.slow
def test_outputs_table_chart_and_details(bench_run):
    out, summary, _ = bench_run
    md = (out / "results-seed0.md").read_text()
    for m in METHODS:
        assert f"| {m} |" in md
    with Image.open(out / "results-seed0.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200
    detail = json.loads((out / "results-seed0.json").read_text())
    assert detail["methods"] == summary["methods"]
    assert set(detail["recall_at_1_by_edit"]["isa"]) == {"add", "colour", "move", "remove", "shape", "size"}
    # the per-edit R@1 (oracles included) recombines into the overall R@1, weighted by edit counts
    world = out / "worlds" / ShapesBenchConfig.small().world.key()
    counts = Counter(a["shared_concept"] for a in json.loads((world / "annotations" / "test.json").read_text()))
    overall = {**summary["methods"], **detail["oracles"]}
    assert set(detail["recall_at_1_by_edit"]) == set(overall)
    for name, by_edit in detail["recall_at_1_by_edit"].items():
        weighted = sum(counts[k] * v for k, v in by_edit.items()) / sum(counts.values())
        assert abs(weighted - overall[name]["R@1"]) < 0.1, (name, weighted, overall[name]["R@1"])
    # every trained method gets a modifier-response row over every edit type, plus "all"
    assert set(detail["modifier_response"]) == set(TRAINED)
    for row in detail["modifier_response"].values():
        assert set(row) == {"all", *counts}
        assert all(v["shift_ratio"] > 0 and -1 <= v["direction_cos"] <= 1 for v in row.values())
    assert "Modifier response" in md
    # perfect knowledge of the target's description is an upper bound for what text can retrieve
    assert detail["oracles"]["oracle_target_caption"]["R@10"] >= summary["methods"]["text_only"]["R@10"]


@pytest.mark.slow
def test_cli_reuses_every_stage_and_prints_the_summary_last(bench_run):
    out, summary, cold = bench_run
    t0 = time.perf_counter()
    proc = lab("bench", "shapes", "--small", "--seed", "0", "--out", str(out), "--json")
    warm = time.perf_counter() - t0
    assert last_json(proc) == summary  # same cached models, same numbers
    assert "reusing" in proc.stderr
    assert warm < cold


@pytest.mark.slow
def test_demo_no_serve_on_the_cached_pipeline(bench_run):
    out, summary, _ = bench_run
    proc = lab("demo", "--small", "--no-serve", "--workdir", str(out))
    res = last_json(proc)
    # the quality it prints is the bench's own measurement of the same cached models
    for method in ("isa", "image_plus_text"):
        for metric in ("R@1", "R@10"):
            assert abs(res["test"][method][metric] - summary["methods"][method][metric]) <= 0.051, (method, metric)
    assert "test queries" in proc.stderr
    world = out / "worlds" / ShapesBenchConfig.small().world.key()
    images = json.loads((world / "annotations" / "image_info_unlabeled2017.json").read_text())["images"]
    assert res["gallery_items"] == len(images)
    assert res["queries"] == 4 and 0 <= res["hits_at_5"] <= 4
    assert res["edge_top5_shared"] >= 3
    shape = re.search(r"(\d+) tokens x (\d+)", proc.stderr)
    n, d = int(shape.group(1)), int(shape.group(2))
    assert n == ShapesBenchConfig.small().train.tokens
    assert res["payload_bytes"] == _HEADER.size + 2 * n * d + 4  # header + fp16 tokens + CRC32, nothing else
    for needle in ("composed search", "device path", "isacir serve --gallery"):
        assert needle in proc.stderr, needle
    diff = re.search(r"max \|diff\| ([0-9.e+-]+)", proc.stderr)
    assert diff and float(diff.group(1)) < 1e-5


def test_cache_keys_follow_what_determines_each_model():
    base = ShapesBenchConfig(seed=2)
    # pinned: a change to the preset or to the key derivation must be deliberate (and in CHANGELOG.md)
    assert {m: base.method_key(m) for m in TRAINED} == PINNED_KEYS
    tc = base.train
    for change in (
        {"word_weight": 0.1},
        {"temperature": 0.07},
        {"learn_temperature": True},
        {"output_stride": None},
        {"augment": "light"},
        {"backbone": "mobilenetv3_small_050"},
        {"max_steps": 1000},
    ):
        assert base.method_key("isa") != replace(base, train=tc.replace(**change)).method_key("isa"), change
    # the backbone, its stride and pixel augmentation are isa's alone: the symmetric baselines keep their runs
    for method in ("isa_symmetric", "pic2word"):
        for change in ({"output_stride": 32}, {"augment": "none"}, {"backbone": "efficientnet_b0"}, {"image_size": 96}):
            assert base.method_key(method) == replace(base, train=tc.replace(**change)).method_key(method), change
    assert base.method_key("pic2word") == replace(base, train=tc.replace(tokens=4)).method_key("pic2word")
    assert base.method_key("isa_symmetric") != replace(base, train=tc.replace(tokens=4)).method_key("isa_symmetric")
    # how a run is carried out never changes what it learns
    for change in ({"progress": False}, {"cache_dir": "/elsewhere"}, {"checkpoint_every": 7}, {"num_workers": 3}):
        for method in TRAINED:
            assert base.method_key(method) == replace(base, train=tc.replace(**change)).method_key(method), change
    assert base.foundation_key() != ShapesBenchConfig(foundation_steps=1200).foundation_key()
    assert base.method_key("isa") != ShapesBenchConfig(seed=3).method_key("isa")


def test_bench_trains_each_row_with_the_preset():
    from isacir.training import load_config

    cfg = ShapesBenchConfig(seed=4)
    assert cfg.train == load_config("shapes-cir") and cfg.template == SHAPES_TEMPLATE
    isa, sym = cfg.train_config("isa"), cfg.train_config("isa_symmetric")
    assert (isa.method, isa.seed, isa.output_stride) == ("isa", 4, 16)
    assert (sym.method, sym.output_stride) == ("isa-symmetric", None)  # the registered spelling; no backbone


@pytest.mark.slow
def test_trained_methods_use_the_recipe_temperature(bench_run):
    import csv

    out, _, _ = bench_run
    cfg = ShapesBenchConfig.small()
    fixed = cfg.train.temperature
    assert not cfg.train.learn_temperature, "the recipe fixes the GCD temperature"
    for method in TRAINED:
        run_dir = out / "methods" / f"{method}-{cfg.method_key(method)}"
        tc = json.loads((run_dir / "train_config.json").read_text())
        logged = {float(row["temperature"]) for row in csv.DictReader((run_dir / "train_log.csv").open())}
        assert not tc["learn_temperature"] and tc["temperature"] == fixed
        assert logged and all(abs(t - fixed) < 1e-4 for t in logged)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        ShapesBenchConfig(methods=("isa", "magic"))


@pytest.mark.slow
def test_eval_shapes_matches_the_bench(bench_run, tmp_path):
    out, summary, _ = bench_run
    detail = json.loads((out / "results-seed0.json").read_text())
    cfg = ShapesBenchConfig.small()
    world = out / "worlds" / cfg.world.key()
    isa = out / "methods" / f"isa-{cfg.method_key('isa')}" / "final"
    proc = run(
        "eval",
        "--benchmark",
        "shapes",
        "--data",
        str(world),
        "--foundation",
        detail["foundation"],
        "--query-encoder",
        str(isa),
        "--out",
        str(tmp_path / "eval"),
        "--workers",
        "0",
    )
    metrics = last_json(proc)["metrics"]["shapes"]
    for k, v in summary["methods"]["isa"].items():
        assert metrics[k] == pytest.approx(v, abs=0.01), k


def test_modifier_response_of_spliced_words_equals_the_caption(openclip_fnd):
    """A perfect inversion (the caption's own word embeddings in the slot) responds exactly like words."""
    import numpy as np
    import torch

    from isacir_lab.shapes.bench import SHAPES_TEMPLATE, modifier_response, summarize_response

    captions = ["a large red circle", "a small blue square", "a large green cross"]
    lengths = {openclip_fnd.embed_words(c).shape[0] for c in captions}
    assert len(lengths) == 1, "captions must tokenize to the same length to stack"
    slot = torch.stack([openclip_fnd.embed_words(c) for c in captions])
    mods = [["make it blue"], ["move it to the left"], ["bigger"]]
    resp = modifier_response(openclip_fnd, SHAPES_TEMPLATE, slot, mods, captions, batch_size=2)
    assert np.allclose(resp["shift"], resp["caption_shift"], atol=1e-5)
    assert np.allclose(resp["direction"], 1.0, atol=1e-3)
    assert (resp["caption_shift"] > 0).all()
    # random tokens respond differently, so the equality above is not vacuous
    noise = modifier_response(openclip_fnd, SHAPES_TEMPLATE, torch.randn_like(slot) * slot.std(), mods, captions)
    assert not np.allclose(noise["shift"], noise["caption_shift"], atol=1e-3)
    # the summary is the ratio of summed shifts and the mean direction, per kind and overall
    toy = {
        "shift": np.array([1.0, 2.0, 5.0]),
        "caption_shift": np.array([2.0, 2.0, 2.0]),
        "direction": np.array([0.5, 1.0, 0.0]),
    }
    summary = summarize_response(toy, ["colour", "size", "colour"])
    assert summary == {
        "all": {"shift_ratio": 1.333, "direction_cos": 0.5},
        "colour": {"shift_ratio": 1.5, "direction_cos": 0.25},
        "size": {"shift_ratio": 1.0, "direction_cos": 1.0},
    }


@pytest.mark.parametrize(
    "override, needle",
    [
        ("temperature=warm", "temperature must be float"),
        ("output_stride=12", "output_stride must be one of 8, 16, 32 or null"),
        ("augment=strong", "unknown augmentation 'strong'"),
        ("lr=0", "lr must be positive"),
        ("tempreature=0.2", "unknown training setting 'tempreature'"),
        ("max_steps", "KEY=VALUE"),
    ],
)
def test_bad_bench_override_is_a_one_line_error(tmp_path, override, needle):
    proc = lab("bench", "shapes", "--small", "--override", override, "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())  # rejected before any stage ran
