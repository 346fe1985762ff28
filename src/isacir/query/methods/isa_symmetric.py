"""``isa-symmetric``: the token learner on the large model's own patch features (a baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..token_learner import AdaptiveTokenLearner
from .base import QueryMethod, register_method

if TYPE_CHECKING:
    from ...foundation import Foundation, ImageFeatures
    from ..config import QueryEncoderConfig
    from ..encoder import QueryEncoder


@register_method
class IsaSymmetric(QueryMethod):
    name = "isa-symmetric"
    aliases = ("isa_symmetric",)
    reads = "local"
    unused_settings = ("backbone", "pretrained_backbone", "image_size", "output_stride", "augment")
    summary = "token learner on the large model's patch features (symmetric baseline)"

    def create_kwargs(self, foundation: Foundation, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"input_dim": foundation.embed_dim}

    def build(self, encoder: QueryEncoder, config: QueryEncoderConfig, backbone_pretrained: bool | str) -> None:
        encoder.token_learner = AdaptiveTokenLearner(
            config.input_dim, config.word_dim, **encoder.token_learner_kwargs()
        )

    def forward(
        self,
        encoder: QueryEncoder,
        pixels: torch.Tensor | None,
        global_features: torch.Tensor | None,
        local_features: torch.Tensor | None,
        return_maps: bool,
    ) -> Any:
        if local_features is None:
            raise ValueError("method 'isa-symmetric' needs the foundation's local features")
        grid = local_features.transpose(1, 2).unsqueeze(-1)  # [B, D, P, 1]: positions as a 1-wide map
        assert encoder.token_learner is not None  # made by build()
        return encoder.token_learner(grid, return_maps=return_maps)

    def inputs_from_features(self, encoder: QueryEncoder, feats: ImageFeatures) -> dict[str, torch.Tensor]:
        from ...foundation.base import pool_patch_grid

        if feats.local is None:
            raise ConfigError(f"{type(feats).__name__} without patch features: isa-symmetric needs a ViT foundation")
        local = F.normalize(pool_patch_grid(feats.local, encoder.config.local_grid), dim=-1)
        return {"local_features": local.to(encoder.device)}
