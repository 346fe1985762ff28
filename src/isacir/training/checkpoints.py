"""The trainer's resumable checkpoints: weights, optimizer, scheduler, RNG states and the data position."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .trainer import TrainModule

    pass


STATE_NAME = "trainer_state.pt"


# ----- checkpoints --------------------------------------------------------------------------------
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"))
    ckpts = [c for c in ckpts if (c / STATE_NAME).is_file() and (c / "model.safetensors").is_file()]
    return ckpts[-1] if ckpts else None


def _save_checkpoint(out_dir: Path, step: int, module: TrainModule, optimizer, scheduler, position: dict, keep: int):
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        module.encoder.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "position": position,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "temperature": module.temperature.state_dict(),
                "rng": _rng_state(),
            },
            tmp / STATE_NAME,
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(root.glob("step-*"))[:-keep] if keep > 0 else []
    for o in old:
        shutil.rmtree(o, ignore_errors=True)
    return final
