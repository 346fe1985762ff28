"""Run by tests/test_training.py under torchrun: trains, then dumps this rank's weights."""

import sys
import warnings

import torch

warnings.simplefilter("ignore")

from isacir.foundation import create_foundation  # noqa: E402
from isacir.training import TrainConfig, train  # noqa: E402
from isacir.training.distributed import shutdown_distributed  # noqa: E402

images, foundation, out = sys.argv[1:4]
torch.set_num_threads(1)
fnd = create_foundation(foundation)
cfg = TrainConfig(
    method="isa",
    backbone="mobilenetv3_small_050",
    tokens=2,
    image_size=48,
    epochs=2,
    batch_size=8,
    lr=1e-3,
    warmup_steps=1,
    num_workers=0,
    augment="light",
    progress=False,
    checkpoint_every=1000,
)
res = train(images, fnd, out, cfg, log=lambda m: None)
rank = torch.distributed.get_rank()
torch.save({k: v.detach().clone() for k, v in res.encoder.state_dict().items()}, f"{out}/rank{rank}.pt")
print(f"rank {rank} world {torch.distributed.get_world_size()} steps {res.steps}")
shutdown_distributed()
