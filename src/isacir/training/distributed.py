"""Training on several processes (``torchrun``, DDP; gloo on a CPU): who runs, what they share, in which order."""

from __future__ import annotations

import datetime
import gc
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ..errors import IsacirError
from .losses import (
    row_counts,
)

if TYPE_CHECKING:
    pass


class TrainingError(IsacirError):
    pass


# ----- distributed helpers ------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # generous timeout: ranks wait for each other around the teacher-cache build
        dist.init_process_group(
            backend="nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=4)
        )
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown_distributed() -> None:
    """Leave the process group so that the process exits cleanly.

    A DistributedDataParallel wrapper sits in a reference cycle and keeps the backend's process
    group alive after ``destroy_process_group``; if the collector first frees it while the
    interpreter is finalising, gloo's threads are torn down unjoined and the process aborts
    ("terminate called without an active exception") after its work is done. Collecting first
    frees the group while the interpreter is whole; the barrier lets no rank leave while another
    still talks to it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def _skip_batch(n: int, info: DistInfo, device: torch.device) -> bool:
    """Whether every rank skips this step: decided together, so no rank waits alone at the sync.

    Skipped when some rank has no usable image left in its batch or the global batch has fewer
    than two (a contrastive loss needs a negative). A rank with one image still takes part: the
    global batch gives it negatives.
    """
    if info.world <= 1:
        return n < 2
    counts = row_counts(n, device)
    return min(counts) == 0 or sum(counts) < 2


def check_shared_filesystem(folders: Sequence[Path], info: DistInfo) -> None:
    """Every rank must see what rank 0 writes: the teacher cache and the manifests live there.

    Rank 0 writes a token into each folder; every rank reads it back; a rank on another machine
    without a shared filesystem fails here with the folder and host named, not hours later.
    """
    if info.world <= 1:
        return
    token = uuid.uuid4().hex if info.main else ""
    box = [token]
    dist.broadcast_object_list(box, src=0)
    token = box[0]
    if info.main:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f".isacir-shared-{token}").write_text(token)
    dist.barrier()
    missing = [
        str(folder)
        for folder in folders
        if not (folder / f".isacir-shared-{token}").is_file()
        or (folder / f".isacir-shared-{token}").read_text() != token
    ]
    report: list = [None] * info.world
    dist.all_gather_object(report, (socket.gethostname(), missing))
    dist.barrier()
    if info.main:
        for folder in folders:
            (folder / f".isacir-shared-{token}").unlink(missing_ok=True)
    bad = [(r, host, m) for r, (host, m) in enumerate(report) if m]
    if bad:
        detail = "; ".join(f"rank {r} on {host} cannot see {', '.join(m)}" for r, host, m in bad)
        raise TrainingError(
            "distributed training needs a filesystem shared by every rank for the output folder and the "
            f"teacher cache (rank 0 runs on {report[0][0]}): {detail}. Put --out and --cache-dir on shared "
            "storage (NFS, Lustre, a mounted bucket)."
        )


def _average_buffers(module: nn.Module, info: DistInfo) -> None:
    """Average float buffers (BatchNorm running stats) across ranks so every rank holds the same model.

    DDP keeps parameters in lockstep but each rank updates running statistics on its own shard.
    """
    if info.world <= 1:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world)


def epoch_order(n: int, seed: int, epoch: int, info: DistInfo, batch_size: int) -> list[int]:
    """This rank's indices for ``epoch``: a seeded permutation, sharded, cut to whole batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    shard = perm[info.rank :: info.world]
    usable = (n // info.world // batch_size) * batch_size
    return shard[:usable]
