"""Epoch time with the teacher-feature cache vs recomputing teacher features every step.

    .venv/bin/python benchmarks/train_cache_speedup.py                      # ViT-L/14 teacher, EfficientNet-B0 student
    .venv/bin/python benchmarks/train_cache_speedup.py --foundation tiny    # the tiny test models

Both runs use the same images, config and seed; only ``use_cache`` differs. The cached run's first
epoch includes building the cache, so the ratio is reported for epochs 2+ (and epoch 1 apart).
Random weights: the cost of a forward/backward does not depend on their values. Prints one JSON
object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from isacir.data.samples import pink_noise_image
from isacir.foundation import create_foundation
from isacir.training import TrainConfig, train


def epoch_times(history: list[dict]) -> list[float]:
    ends: dict[int, float] = {}
    for row in history:
        ends[row["epoch"]] = row["elapsed_s"]
    times, prev = [], 0.0
    for e in sorted(ends):
        times.append(ends[e] - prev)
        prev = ends[e]
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14", help="'tiny' for the test-sized CLIP")
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: trainer's auto)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = args.foundation
        if name == "tiny":
            from isacir.testing import save_tiny_openclip

            name = save_tiny_openclip(tmp / "tiny")
            args.image_size = args.image_size or 64
            args.backbone = "mobilenetv3_small_050" if args.backbone == "efficientnet_b0" else args.backbone
        fnd = create_foundation(name)
        folder = tmp / "images"
        folder.mkdir()
        for i in range(args.images):
            pink_noise_image(256, seed=i).save(folder / f"{i:04d}.jpg", quality=90)
        results = {}
        for use_cache in (True, False):
            cfg = TrainConfig(
                backbone=args.backbone,
                tokens=8,
                image_size=args.image_size,
                epochs=args.epochs,
                batch_size=args.batch_size,
                num_workers=args.workers,
                use_cache=use_cache,
                progress=False,
                log_every=1,
                checkpoint_every=10_000,
                warmup_steps=1,
            )
            t0 = time.perf_counter()
            res = train(str(folder), fnd, tmp / f"run-{use_cache}", cfg, log=lambda m: None)
            wall = time.perf_counter() - t0
            results[use_cache] = {
                "epochs_s": [round(t, 2) for t in epoch_times(res.history)],
                "setup_s": round(wall - res.seconds, 2),
            }
    cached, fresh = results[True], results[False]
    later = statistics.mean(fresh["epochs_s"][1:]) / statistics.mean(cached["epochs_s"][1:])
    first = (fresh["epochs_s"][0] + fresh["setup_s"]) / (cached["epochs_s"][0] + cached["setup_s"])
    out = {
        "foundation": args.foundation,
        "backbone": args.backbone,
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cached_epoch_s": cached["epochs_s"],
        "cache_build_and_setup_s": cached["setup_s"],
        "uncached_epoch_s": fresh["epochs_s"],
        "uncached_setup_s": fresh["setup_s"],
        "speedup_epoch2plus": round(later, 2),
        "speedup_epoch1_incl_build": round(first, 2),
    }
    print(f"epochs 2+: {later:.2f}x faster with the cache; epoch 1 incl. cache build: {first:.2f}x", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
