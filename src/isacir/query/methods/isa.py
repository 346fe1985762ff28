"""``isa``: a light timm backbone on pixels plus the adaptive token learner (the asymmetric method)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..backbones import create_backbone
from ..token_learner import AdaptiveTokenLearner
from .base import QueryMethod, register_method

if TYPE_CHECKING:
    from ..config import QueryEncoderConfig
    from ..encoder import QueryEncoder


@register_method
class Isa(QueryMethod):
    name = "isa"
    reads = "pixels"
    has_backbone = True
    summary = "light backbone on pixels + adaptive token learner (runs on the device)"

    def build(self, encoder: QueryEncoder, config: QueryEncoderConfig, backbone_pretrained: bool | str) -> None:
        encoder.backbone, channels, _ = create_backbone(
            config.backbone, pretrained=backbone_pretrained, output_stride=config.output_stride
        )
        encoder.token_learner = AdaptiveTokenLearner(channels, config.word_dim, **encoder.token_learner_kwargs())

    def forward(
        self,
        encoder: QueryEncoder,
        pixels: torch.Tensor | None,
        global_features: torch.Tensor | None,
        local_features: torch.Tensor | None,
        return_maps: bool,
    ) -> Any:
        if pixels is None:
            raise ValueError("method 'isa' needs pixels")
        backbone, learner = encoder.backbone, encoder.token_learner
        assert backbone is not None and learner is not None  # made by build()
        return learner(backbone(pixels)[-1], return_maps=return_maps)

    def resume_checks(self, config: QueryEncoderConfig, asked: Any) -> dict[str, tuple[Any, Any]]:
        checks = super().resume_checks(config, asked)
        checks["backbone"] = (config.backbone, asked.backbone)
        checks["output_stride"] = (config.output_stride, asked.output_stride)
        if asked.image_size is not None:
            checks["image_size"] = (config.preprocess.image_size, asked.image_size)
        return checks
