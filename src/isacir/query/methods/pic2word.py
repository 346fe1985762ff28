"""``pic2word``: one pseudo word from the large model's global image feature (a baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import ConfigError
from .base import QueryMethod, register_method

if TYPE_CHECKING:
    from ...foundation import Foundation, ImageFeatures
    from ..config import QueryEncoderConfig
    from ..encoder import QueryEncoder


class Pic2WordMapper(nn.Module):
    """A three-layer MLP from the global image feature to one word embedding."""

    def __init__(self, input_dim: int, word_dim: int, hidden_dim: int, output_rms: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, word_dim),
        )
        self.out_norm = nn.LayerNorm(word_dim)
        nn.init.constant_(self.out_norm.weight, output_rms)

    def forward(self, global_features: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.mlp(global_features)).unsqueeze(1)


@register_method
class Pic2Word(QueryMethod):
    name = "pic2word"
    reads = "global"
    fixed_tokens = 1
    unused_settings = ("backbone", "pretrained_backbone", "image_size", "output_stride", "augment", "tokens")
    summary = "one token from the large model's global feature (symmetric baseline)"

    def create_kwargs(self, foundation: Foundation, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"input_dim": foundation.embed_dim}

    def build(self, encoder: QueryEncoder, config: QueryEncoderConfig, backbone_pretrained: bool | str) -> None:
        if config.num_tokens != 1:
            raise ConfigError("pic2word produces exactly one token (num_tokens=1)")
        encoder.mapper = Pic2WordMapper(config.input_dim, config.word_dim, config.hidden_dim, config.output_rms)

    def forward(
        self,
        encoder: QueryEncoder,
        pixels: torch.Tensor | None,
        global_features: torch.Tensor | None,
        local_features: torch.Tensor | None,
        return_maps: bool,
    ) -> Any:
        if global_features is None:
            raise ValueError("method 'pic2word' needs the foundation's global features")
        assert encoder.mapper is not None  # made by build()
        tokens = encoder.mapper(global_features)
        return (tokens, None) if return_maps else tokens

    def inputs_from_features(self, encoder: QueryEncoder, feats: ImageFeatures) -> dict[str, torch.Tensor]:
        return {"global_features": feats.global_.to(encoder.device)}
