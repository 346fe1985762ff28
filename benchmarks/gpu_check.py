"""GPU check, for a CUDA machine: the trainer's bf16-autocast path and GPU latencies.

1. Trains an ISA query encoder (EfficientNet-B0 + 8 tokens) against a random-init ViT-L/14 for a
   few dozen steps through the real trainer on CUDA, with the teacher cache and without, and
   checks the losses are finite and falling and the checkpoint reloads.
2. Measures batch-1 latency on the GPU: the light query side against the large image encoder, and
   the composed-query text encode the server runs per search.
3. Measures gallery indexing (``isacir bench index``: decode workers, the foundation under
   autocast, SQLite commits) in images/s on the GPU against the CPU, for the same foundation.

    PYTHONPATH=src python benchmarks/gpu_check.py [--steps 40] [--batch-size 64]
    PYTHONPATH=src python benchmarks/gpu_check.py --only index --index-images 2048
Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(folder: Path, n: int, size: int = 256) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_ms(fn, reps: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def index_gpu_vs_cpu(args, dev: str) -> dict:
    """Indexing throughput of one foundation on ``dev`` and on the CPU, each with its bare forward."""
    import os

    from isacir.bench.indexing import bench_index

    cores = os.cpu_count() or 1
    on_dev = bench_index(
        args.foundation, args.index_images, args.index_batch_size, workers=min(8, cores), threads=cores, device=dev
    )
    on_cpu = bench_index(args.foundation, args.index_images_cpu, 16, workers=2, threads=cores, device="cpu")
    return {
        "foundation": args.foundation,
        dev: on_dev,
        "cpu": on_cpu,
        "index_speedup": round(on_dev["index_img_s"] / on_cpu["index_img_s"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14")
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    ap.add_argument("--only", choices=("all", "train", "index"), default="all")
    ap.add_argument("--index-images", type=int, default=1024, help="Images indexed on the GPU.")
    ap.add_argument("--index-images-cpu", type=int, default=64, help="Images indexed on the CPU (slow: keep small).")
    ap.add_argument("--index-batch-size", type=int, default=128)
    args = ap.parse_args()
    dev = args.device
    assert dev == "cpu" or torch.cuda.is_available(), "no CUDA device"
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder
    from isacir.training import TrainConfig, train

    res: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__}
    if args.only in ("all", "index"):
        res["index"] = index_gpu_vs_cpu(args, dev)
        print(json.dumps(res), flush=True)
        if args.only == "index":
            return
    fnd = create_foundation(args.foundation).to(dev)
    work = Path(tempfile.mkdtemp(prefix="isacir-gpu-"))
    make_images(work / "images", args.batch_size * 4)
    for cached in (True, False):
        cfg = TrainConfig(
            backbone=args.backbone,
            tokens=8,
            batch_size=args.batch_size,
            max_steps=args.steps,
            warmup_steps=5,
            lr=3e-4,
            use_cache=cached,
            checkpoint_every=10_000,
            progress=False,
            log_every=5,
            num_workers=4 if dev == "cuda" else 0,
        )
        t = time.perf_counter()
        out = train(str(work / "images"), fnd, work / f"run-{cached}", cfg, log=lambda m: print(m, flush=True))
        wall = time.perf_counter() - t
        losses = [h["loss"] for h in out.history]
        qe = QueryEncoder.from_pretrained(work / f"run-{cached}" / "final", foundation=fnd)
        res["train_cached" if cached else "train_uncached"] = {
            "steps": out.steps,
            "seconds_incl_cache_build": round(wall, 1),
            "train_seconds": round(out.seconds, 1),
            "images_per_s_last": out.history[-1]["images_per_s"],
            "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4),
            "finite": all(math.isfinite(x) for x in losses),
            "falling": float(np.mean(losses[-5:])) < float(np.mean(losses[:5])),
            "reloaded_fingerprint": qe.fingerprint,
        }
        print(json.dumps(res), flush=True)

    qe = qe.to(dev).eval()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    px_light = qe.preprocess(img)[None].to(dev)
    px_large = fnd.preprocess_batch([img]).to(dev)
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        res["light_ms_bf16"] = round(cuda_ms(lambda: qe(px_light)), 3)
        res["light_ms_bf16_incl_preprocess"] = round(cuda_ms(lambda: qe.encode_images([img], foundation=fnd)), 3)
        res["large_ms_bf16"] = round(cuda_ms(lambda: fnd.encode_image(px_large)), 3)
        tokens = qe.encode_images([img], foundation=fnd)
        res["composed_text_ms_bf16"] = round(cuda_ms(lambda: fnd.encode_composed(tokens, [["make it red"]])), 3)
    res["speedup_bf16"] = round(res["large_ms_bf16"] / res["light_ms_bf16"], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
