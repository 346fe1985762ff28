"""Miniature copies of the CIRR, FashionIQ and CIRCO layouts, loaded and evaluated end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isacir.evaluation import (
    BenchmarkDataError,
    evaluate,
    load_circo,
    load_cirr,
    load_fashioniq,
    submission_files,
)


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).resize((32, 32)).save(path)


def make_cirr(root: Path) -> Path:
    """6 images; pair 0's target is a pixel copy of its reference, so image_only must find it."""
    names = [f"dev-{i}-0-img0" for i in range(6)]
    split = {n: f"./dev/{n}.png" for n in names}
    for i, n in enumerate(names):
        _img(root / "dev" / f"{n}.png", seed=100 + i)
    (root / "dev" / f"{names[1]}.png").write_bytes((root / "dev" / f"{names[0]}.png").read_bytes())
    caps = [
        {
            "pairid": 7,
            "reference": names[0],
            "target_hard": names[1],
            "target_soft": {names[1]: 1.0},
            "caption": "make it the same",
            "img_set": {"id": 1, "members": names[:4], "reference_rank": 0, "target_rank": 1},
        },
        {
            "pairid": 8,
            "reference": names[2],
            "target_hard": names[3],
            "target_soft": {},
            "caption": "is red",
            "img_set": {
                "id": 2,
                "members": [names[2], names[3], names[4], names[5]],
                "reference_rank": 0,
                "target_rank": 1,
            },
        },
    ]
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "cirr" / "captions" / "cap.rc2.val.json").write_text(json.dumps(caps))
    (root / "cirr" / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split))
    test = [{k: v for k, v in c.items() if k not in ("target_hard", "target_soft")} for c in caps]
    (root / "cirr" / "captions" / "cap.rc2.test1.json").write_text(json.dumps(test))
    (root / "cirr" / "image_splits" / "split.rc2.test1.json").write_text(json.dumps(split))
    return root


def make_fiq(root: Path) -> Path:
    for cat in ("dress", "shirt", "toptee"):
        ids = [f"{cat}{i}" for i in range(5)]
        for i, x in enumerate(ids):
            _img(root / "images" / f"{x}.{'png' if i % 2 else 'jpg'}", seed=hash(x) % 1000)
        (root / "images" / f"{ids[1]}.png").write_bytes((root / "images" / f"{ids[0]}.jpg").read_bytes())
        caps = [{"target": ids[1], "candidate": ids[0], "captions": ["is the same.", "looks identical"]}]
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(caps))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
    return root


def make_circo(root: Path) -> Path:
    coco = root / "COCO2017_unlabeled"
    images = [{"id": 1000 + i, "file_name": f"{1000 + i:012d}.jpg"} for i in range(8)]
    for i, im in enumerate(images):
        _img(coco / "unlabeled2017" / im["file_name"], seed=300 + i)
    for j in (1, 2):  # two exact copies of the reference: both ground truth
        (coco / "unlabeled2017" / images[j]["file_name"]).write_bytes(
            (coco / "unlabeled2017" / images[0]["file_name"]).read_bytes()
        )
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    val = [
        {
            "id": 0,
            "reference_img_id": 1000,
            "target_img_id": 1001,
            "relative_caption": "is identical",
            "shared_concept": "thing",
            "gt_img_ids": [1001, 1002, 1007],
        }
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    test = [{k: v for k, v in val[0].items() if k not in ("target_img_id", "gt_img_ids")}]
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    return root


def test_cirr_layout_metrics_and_submission(tmp_path, openclip_fnd):
    root = make_cirr(tmp_path / "CIRR")
    bench = load_cirr(root, "val")
    assert len(bench.queries) == 2 and len(bench.gallery) == 6 and bench.exclude_reference
    q = bench.queries[0]
    assert q.qid == "7" and q.targets == ["dev-1-0-img0"] and q.subset[:2] == ["dev-0-0-img0", "dev-1-0-img0"]
    metrics, rankings = evaluate(bench, openclip_fnd, mode="image_only", progress=False)
    # reference excluded: the pixel copy ranks first for query 0
    assert rankings[0][0] == "dev-1-0-img0" and all("dev-0-0-img0" not in r for r in rankings[:1])
    assert metrics["R@50"] == 100.0 and metrics["Rsubset@3"] == 100.0
    assert metrics["R@1"] >= 50.0 and metrics["Rsubset@1"] >= 50.0
    assert metrics["Avg"] == pytest.approx((metrics["R@5"] + metrics["Rsubset@1"]) / 2)
    test = load_cirr(root, "test")
    assert test.split == "test1" and not test.labelled and test.queries[0].targets == []
    _, ranks = evaluate(test, openclip_fnd, mode="image_plus_text", progress=False)
    files = submission_files(test, ranks, tmp_path / "sub")
    recall = json.loads(files[0].read_text())
    subset = json.loads(files[1].read_text())
    assert recall["version"] == "rc2" and recall["metric"] == "recall" and len(recall["7"]) == 5
    assert subset["metric"] == "recall_subset" and len(subset["8"]) == 3 and "dev-2-0-img0" not in subset["8"]


def test_fashioniq_layout(tmp_path, openclip_fnd):
    root = make_fiq(tmp_path / "fiq")
    bench = load_fashioniq(root, "dress")
    q = bench.queries[0]
    assert q.modifiers == ["is the same and looks identical", "looks identical and is the same"]
    assert bench.gallery["dress1"].suffix == ".png" and bench.gallery["dress0"].suffix == ".jpg"
    assert not bench.exclude_reference
    metrics, rankings = evaluate(bench, openclip_fnd, mode="image_only", progress=False)
    # no reference exclusion in FashionIQ: reference and its pixel copy tie for the top two
    assert set(rankings[0][:2]) == {"dress0", "dress1"} and metrics["R@10"] == 100.0
    with pytest.raises(BenchmarkDataError, match="category"):
        load_fashioniq(root, "shoes")


def test_circo_layout_map(tmp_path, openclip_fnd):
    root = make_circo(tmp_path / "CIRCO")
    bench = load_circo(root, "val")
    assert bench.queries[0].targets == ["1001", "1002", "1007"] and len(bench.gallery) == 8
    metrics, rankings = evaluate(bench, openclip_fnd, mode="image_only", progress=False)
    assert rankings[0][:2] in (["1001", "1002"], ["1002", "1001"]) and "1000" not in rankings[0]
    rank_1007 = rankings[0].index("1007") + 1
    # hand computation: hits at ranks 1, 2 and rank_1007; AP@5 = (1 + 1 + [3/r if r <= 5]) / min(3, 5)
    expected5 = (1 + 1 + (3 / rank_1007 if rank_1007 <= 5 else 0)) / 3 * 100
    assert metrics["mAP@5"] == pytest.approx(expected5)
    # 1001 and 1002 are pixel copies (a tie): any ground truth is first, the official target is in the top 2
    assert metrics["Rany@1"] == 100.0 and metrics["R@5"] == 100.0
    assert bench.queries[0].target == "1001"
    test = load_circo(root, "test")
    _, ranks = evaluate(test, openclip_fnd, mode="text_only", progress=False)
    sub = json.loads(submission_files(test, ranks, tmp_path / "sub")[0].read_text())
    assert list(sub) == ["0"] and len(sub["0"]) == 7 and len(set(sub["0"])) == 7


def test_circo_recall_counts_only_the_target_and_rany_counts_any_ground_truth():
    """Hand-computed: CIRCO's official Recall@K looks for target_img_id alone (mAP uses every gt)."""
    from isacir.evaluation import CIRBenchmark, CIRQuery, score_benchmark

    queries = [
        CIRQuery("0", "ref0", ["m"], targets=["t0", "g0"], target="t0"),
        CIRQuery("1", "ref1", ["m"], targets=["t1", "g1", "h1"], target="t1"),
    ]
    bench = CIRBenchmark("circo", "val", queries, {}, exclude_reference=True, labelled=True)
    # query 0: another ground truth first, the target second; query 1: the target first
    rankings = [["g0", "t0"] + [f"x{i}" for i in range(60)], ["t1"] + [f"x{i}" for i in range(60)]]
    m = score_benchmark(bench, rankings)
    assert m["R@1"] == 50.0 and m["Rany@1"] == 100.0  # the two definitions differ here
    assert m["R@5"] == m["Rany@5"] == 100.0
    # AP@5 by hand: query 0 hits at 1 and 2 of 2 gt -> 1.0; query 1 hits at 1 of 3 gt -> 1/3
    assert m["mAP@5"] == pytest.approx((1.0 + 1 / 3) / 2 * 100)
    # Shapes-CIR, CIRCO's layout with equally correct ground truths, keeps recall over any of them
    shapes = CIRBenchmark("shapes", "test", queries, {}, exclude_reference=True, labelled=True)
    s = score_benchmark(shapes, rankings)
    assert s["R@1"] == 100.0 and "Rany@1" not in s and s["mAP@5"] == m["mAP@5"]
    no_target = CIRBenchmark("circo", "val", [CIRQuery("2", "r", ["m"], targets=["a"])], {}, True, True)
    with pytest.raises(BenchmarkDataError, match="without target_img_id"):
        score_benchmark(no_target, [["a"]])


def test_isa_mode_runs_on_a_benchmark(tmp_path, openclip_fnd):
    from isacir.query import QueryEncoder

    bench = load_cirr(make_cirr(tmp_path / "CIRR"), "val")
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48)
    metrics, rankings = evaluate(bench, openclip_fnd, mode="isa", query_encoder=qe, progress=False)
    assert set(metrics) >= {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"}
    assert all(len(r) == 5 for r in rankings)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(BenchmarkDataError, match="CIRR captions"):
        load_cirr(tmp_path, "val")
    root = make_circo(tmp_path / "CIRCO")
    (root / "COCO2017_unlabeled" / "unlabeled2017" / "000000001003.jpg").unlink()
    with pytest.raises(BenchmarkDataError, match="not found"):
        load_circo(root, "val")


def test_eval_cli_writes_metrics_and_submissions(tmp_path, tiny_openclip_dir):
    import os
    import subprocess
    import sys

    root = make_cirr(tmp_path / "CIRR")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for split in ("val", "test"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "isacir.cli",
                "eval",
                "--benchmark",
                "cirr",
                "--data",
                str(root),
                "--foundation",
                tiny_openclip_dir[0],
                "--split",
                split,
                "--mode",
                "image_only",
                "--out",
                str(tmp_path / split),
                "--workers",
                "0",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert json.loads((tmp_path / split / "metrics.json").read_text()) == res
    assert res["metrics"]["cirr"] == {} and len(res["submission_files"]) == 2
    fiq = make_fiq(tmp_path / "fiq")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "eval",
            "--benchmark",
            "fashioniq",
            "--data",
            str(fiq),
            "--foundation",
            tiny_openclip_dir[0],
            "--mode",
            "image_only",
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["metrics"]["fashioniq-average"]["R@10"] == 100.0
