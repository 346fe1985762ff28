"""Training from unlabeled images: settings and presets, teacher-feature cache, losses, trainer.

The exports load on first use: the command line reads :class:`TrainConfig` to build its options,
and must not pull in torch for that (``isacir edge-encode`` runs on devices without it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildReport": ".cache",
    "TeacherCache": ".cache",
    "TrainConfig": ".config",
    "list_presets": ".config",
    "load_config": ".config",
    "TrainResult": ".trainer",
    "train": ".trainer",
    "ImageRecord": "..data",
    "content_hash": "..data",
    "discover_images": "..data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isacir.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
