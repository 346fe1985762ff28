"""Distributed embedding with Ray Data (``isacir index --ray [ADDRESS]``).

Decoding and encoding run in Ray actors (each loads the foundation once, by name: a local
checkpoint path must therefore be readable on every node); the driver receives vectors in batches
and commits them through the same crash-safe path as local indexing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..data import ImageRecord


class EmbedActor:
    """Ray Data callable class: a batch of record descriptions -> vectors (or per-item errors)."""

    def __init__(self, foundation: str, threads: int = 1, device: str = "cpu"):
        import torch

        from ..foundation import create_foundation

        torch.set_num_threads(threads)
        self.fnd = create_foundation(foundation, device=device)

    def __call__(self, batch: dict) -> dict:
        import torch

        from ..data import DecodeDataset

        records = [
            ImageRecord(str(p), str(m) or None, int(o), int(s))
            for p, m, o, s in zip(batch["path"], batch["member"], batch["offset"], batch["size"], strict=True)
        ]
        ds = DecodeDataset(records, self.fnd.transform)
        items = [ds[j] for j in range(len(records))]
        dim = self.fnd.embed_dim
        vecs = np.zeros((len(records), dim), np.float32)
        good = [j for j, it in enumerate(items) if not it[3]]
        if good:
            with torch.no_grad():
                out = self.fnd.encode_image(torch.stack([items[j][2] for j in good])).float().cpu().numpy()
            vecs[good] = out
        return {
            "i": np.asarray(batch["i"], dtype=np.int64),
            "hash": np.array([it[1] for it in items], dtype=object),
            "vec": vecs,
            "error": np.array([it[3] for it in items], dtype=object),
        }


def _start_local_ray(num_cpus: int, attempts: int = 2) -> None:
    """Start a private local Ray instance; a busy machine can make the first start time out."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def ray_encoder(
    foundation: str,
    address: str | None = None,
    actors: int = 2,
    batch_size: int = 32,
    threads: int = 1,
    gpus_per_actor: float = 0.0,
):
    """Return an ``encoder(records)`` for :meth:`Gallery.index` that embeds with Ray Data.

    ``gpus_per_actor`` > 0: each actor requests that share of a GPU from Ray and runs the model
    there (Ray sets CUDA_VISIBLE_DEVICES per actor, so ``auto`` finds it)."""

    def encode(records: Sequence[ImageRecord]) -> Iterator[list]:
        import ray

        if not records:
            return
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                _start_local_ray(max(actors, 1) * threads)
        rows = [
            {"i": i, "path": r.path, "member": r.member or "", "offset": r.offset, "size": r.size}
            for i, r in enumerate(records)
        ]
        ds = ray.data.from_items(rows).map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "foundation": foundation,
                "threads": threads,
                "device": "auto" if gpus_per_actor > 0 else "cpu",
            },
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=threads,
            num_gpus=gpus_per_actor if gpus_per_actor > 0 else None,
            batch_format="numpy",
        )
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield [
                (int(i), str(h), v if not e else None, str(e))
                for i, h, v, e in zip(batch["i"], batch["hash"], batch["vec"], batch["error"], strict=True)
            ]

    return encode
