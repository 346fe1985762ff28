"""Run by tests/test_training.py under torchrun (gloo): the global-batch GCD against one process.

Rank r holds rows ``split[r]`` of one global batch. Each rank trains a DDP-wrapped linear layer
and a learnable scale for a few SGD steps with ``gcd_loss_global``; rank 0 also trains an
identical copy in a single process on the whole batch with ``gcd_loss``. Rank 0 writes the
largest differences (loss, gradients, weights) and every rank's decisions of ``_skip_batch``.
"""

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.simplefilter("ignore")

from isacir.training.distributed import (  # noqa: E402
    DistInfo,
    TrainingError,
    _skip_batch,
    check_shared_filesystem,
    shutdown_distributed,
)
from isacir.training.losses import gcd_loss, gcd_loss_global  # noqa: E402

out, split = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(12, 6)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, t, distributed):
        q = self.lin(x)
        if distributed:
            return gcd_loss_global(q, t, self.log_scale.exp())
        loss = gcd_loss(q, t, self.log_scale.exp())
        return loss, loss.detach()


torch.manual_seed(0)
reference = Head()
model = Head()
model.load_state_dict(reference.state_dict())
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
lo, hi = sum(split[:rank]), sum(split[: rank + 1])
diffs = {"loss": 0.0, "grad": 0.0, "weight": 0.0}
for step in range(3):
    g = torch.Generator().manual_seed(100 + step)
    x, t = torch.randn(sum(split), 12, generator=g), torch.randn(sum(split), 6, generator=g)
    opt.zero_grad()
    to_backward, value = ddp(x[lo:hi], t[lo:hi], True)
    to_backward.backward()
    ref_opt.zero_grad()
    ref_loss, _ = reference(x, t, False)
    ref_loss.backward()
    diffs["loss"] = max(diffs["loss"], abs(float(value) - float(ref_loss)))
    for p, r in zip(model.parameters(), reference.parameters(), strict=True):
        diffs["grad"] = max(diffs["grad"], float((p.grad - r.grad).abs().max()))
    opt.step()
    ref_opt.step()
for p, r in zip(model.parameters(), reference.parameters(), strict=True):
    diffs["weight"] = max(diffs["weight"], float((p - r).abs().max()))

info = DistInfo(rank, world, 0)
cases = {"zero_on_one_rank": (0, 5), "one_each": (1, 1), "one_and_four": (1, 4), "two_and_zero": (2, 0)}
decisions = {name: _skip_batch(n[rank], info, torch.device("cpu")) for name, n in cases.items()}
everyone: list = [None] * world
dist.all_gather_object(everyone, decisions)

# a rank that does not share rank 0's filesystem: here, rank 1 looks in a folder of its own
view = Path(out).parent / f"view-of-rank{rank}"
view.mkdir(exist_ok=True)
check_shared_filesystem([Path(out).parent], info)  # the shared case passes
try:
    check_shared_filesystem([view], info)
    message = None
except TrainingError as exc:
    message = str(exc)
messages: list = [None] * world
dist.all_gather_object(messages, message)
if rank == 0:
    with open(out, "w") as f:
        json.dump({"diffs": diffs, "decisions": everyone, "shared_fs": messages}, f)
print(f"rank {rank} done")
del ddp  # its reducer holds the process group: free it before leaving the group
shutdown_distributed()
