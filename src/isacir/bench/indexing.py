"""Indexing throughput against the bare model-forward rate on the same images.

The bare rate is the foundation's ``encode_image`` on already-decoded, preprocessed tensors in
the same batch size: the ceiling for any indexer. The indexer adds reading, hashing, decoding,
SQLite commits and the vector store; DataLoader workers hide decoding behind the forward pass.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch

from ..data.samples import pink_noise_image


def bench_index(
    foundation: str, n: int = 64, batch_size: int = 16, workers: int = 1, threads: int = 2, device: str = "cpu"
) -> dict:
    from ..foundation import create_foundation
    from ..gallery import Gallery

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(foundation, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(n):
            pink_noise_image(320, seed=i).save(folder / f"{i:05d}.jpg", quality=90)
        paths = sorted(folder.iterdir())
        pixels = fnd.preprocess_batch(paths)
        with torch.no_grad():
            fnd.encode_image(pixels[:batch_size])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, n, batch_size):
                fnd.encode_image(pixels[start : start + batch_size])
            bare = n / (time.perf_counter() - t0)
        g = Gallery.open_or_create(Path(tmp) / "gallery", fnd)
        report = g.index([folder], fnd, batch_size=batch_size, num_workers=workers, progress=False)
        g.close()
    return {
        "foundation": foundation,
        "images": n,
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
        "bare_forward_img_s": round(bare, 2),
        "index_img_s": round(report.images_per_s, 2),
        "fraction_of_bare": round(report.images_per_s / bare, 3),
    }
