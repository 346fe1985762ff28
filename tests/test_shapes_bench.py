"""`isacir bench shapes` and `isacir demo` end to end on the scaled-down configuration.

One session-scoped run trains the tiny foundation and all three methods; the CLI run and the
demo afterwards must reuse every cached stage.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter

import pytest
from PIL import Image

from isacir.edge.payload import _HEADER
from isacir.evaluation.shapes_bench import METHODS, METRICS, TRAINED, MethodRecipe, ShapesBenchConfig, run_shapes_bench
from test_cli import last_json, run


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-bench")
    t0 = time.perf_counter()
    summary = run_shapes_bench(out, ShapesBenchConfig.small(seed=0), progress=False, log=lambda *_: None)
    return out, summary, time.perf_counter() - t0


def _chance_recall(out, k: int) -> float:
    """Expected R@k of a random ranking: 1 - C(G-g, k) / C(G, k) per query, averaged."""
    detail = json.loads((out / "results-seed0.json").read_text())
    world = out / "worlds" / ShapesBenchConfig.small().world.key()
    anns = json.loads((world / "annotations" / "test.json").read_text())
    g = detail["gallery"] - 1  # the reference is excluded
    return 100 * sum(1 - math.comb(g - len(a["gt_img_ids"]), k) / math.comb(g, k) for a in anns) / len(anns)


def test_summary_has_every_method_and_metric(bench_run):
    _, summary, _ = bench_run
    assert summary["seed"] == 0
    assert list(summary["methods"]) == list(METHODS)
    for m in METHODS:
        r = summary["methods"][m]
        assert list(r) == list(METRICS)
        assert all(0 <= v <= 100 for v in r.values())
        assert r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@50"]


def test_trained_methods_beat_chance(bench_run):
    out, summary, _ = bench_run
    chance = _chance_recall(out, 10)
    for m in TRAINED:
        assert summary["methods"][m]["R@10"] > 3 * chance, (m, summary["methods"][m], chance)


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
    # perfect knowledge of the target's description is an upper bound for what text can retrieve
    assert detail["oracles"]["oracle_target_caption"]["R@10"] >= summary["methods"]["text_only"]["R@10"]


def test_cli_reuses_every_stage_and_prints_the_summary_last(bench_run):
    out, summary, cold = bench_run
    t0 = time.perf_counter()
    proc = run("bench", "shapes", "--small", "--seed", "0", "--out", str(out), "--json")
    warm = time.perf_counter() - t0
    assert last_json(proc) == summary  # same cached models, same numbers
    assert "reusing" in proc.stderr
    assert warm < cold


def test_demo_no_serve_on_the_cached_pipeline(bench_run):
    out, _, _ = bench_run
    proc = run("demo", "--small", "--no-serve", "--workdir", str(out))
    res = last_json(proc)
    world = out / "worlds" / ShapesBenchConfig.small().world.key()
    images = json.loads((world / "annotations" / "image_info_unlabeled2017.json").read_text())["images"]
    assert res["gallery_items"] == len(images)
    assert res["queries"] == 4 and 0 <= res["hits_at_5"] <= 4
    assert res["edge_top5_shared"] >= 3
    shape = re.search(r"(\d+) tokens x (\d+)", proc.stderr)
    n, d = int(shape.group(1)), int(shape.group(2))
    assert n == ShapesBenchConfig.small().recipe.tokens
    assert res["payload_bytes"] == _HEADER.size + 2 * n * d + 4  # header + fp16 tokens + CRC32, nothing else
    for needle in ("composed search", "device path", "isacir serve --gallery"):
        assert needle in proc.stderr, needle
    diff = re.search(r"max \|diff\| ([0-9.e+-]+)", proc.stderr)
    assert diff and float(diff.group(1)) < 1e-5


def test_word_prior_keeps_earlier_cache_keys():
    base = ShapesBenchConfig()
    assert base.method_key("isa") == ShapesBenchConfig(recipe=MethodRecipe(word_weight=0.0)).method_key("isa")
    assert base.method_key("isa") != ShapesBenchConfig(recipe=MethodRecipe(word_weight=0.1)).method_key("isa")
    assert base.foundation_key() != ShapesBenchConfig(foundation_steps=1200).foundation_key()


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        ShapesBenchConfig(methods=("isa", "magic"))


def test_eval_shapes_matches_the_bench(bench_run, tmp_path):
    out, summary, _ = bench_run
    detail = json.loads((out / "results-seed0.json").read_text())
    cfg = ShapesBenchConfig.small()
    world = out / "worlds" / cfg.world.key()
    isa = out / "methods" / f"isa-{cfg.method_key('isa')}" / "final"
    proc = run("eval", "--benchmark", "shapes", "--data", str(world), "--foundation", detail["foundation"],
               "--query-encoder", str(isa), "--out", str(tmp_path / "eval"), "--workers", "0")
    metrics = last_json(proc)["metrics"]["shapes"]
    for k, v in summary["methods"]["isa"].items():
        assert metrics[k] == pytest.approx(v, abs=0.01), k
