"""QueryEncoder: light backbone + adaptive token learner + preprocessing (the edge side).

Checkpoints are Hugging Face style folders, ``config.json`` next to ``model.safetensors``. The
config pins the foundation (id and fingerprint) whose word-embedding space the tokens live in:
pseudo tokens are meaningless to any other text encoder, so loading against another foundation is
refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint import load_weights, read_config, save_folder
from ..data.imageio import ImageSource, load_image
from ..errors import ConfigError, FoundationMismatchError, same_name_hint
from .backbones import resolve_backbone
from .config import QueryEncoderConfig
from .methods import get_method
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from .token_learner import AdaptiveTokenLearner

if TYPE_CHECKING:
    from ..foundation import Foundation

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def setting_problems(
    foundation: Foundation | None, method: str, num_tokens: int, output_stride: int | None = None
) -> list[str]:
    """Everything wrong with these encoder settings for ``foundation``, so callers such as the
    trainer can name all of it at once and before any expensive work."""
    try:
        impl = get_method(method)
    except ConfigError as exc:
        return [str(exc)]
    return impl.setting_problems(foundation, num_tokens, output_stride)


class QueryEncoder(nn.Module):
    """Turns an image into ``[N, word_dim]`` pseudo tokens for one specific foundation.

    The default method, ``isa``, reads pixels with a light backbone (the asymmetric design). The
    ``isa-symmetric`` and ``pic2word`` baselines read the large model's own image features instead;
    they exist so that every comparison runs through the same trainer and evaluation.
    """

    def __init__(self, config: QueryEncoderConfig, backbone_pretrained: bool | str = False):
        super().__init__()
        self.method_impl = get_method(config.method)
        config.method = self.method_impl.name
        self.config = config
        self.backbone: nn.Module | None = None
        self.token_learner: AdaptiveTokenLearner | None = None
        self.mapper: nn.Module | None = None
        self.method_impl.build(self, config, backbone_pretrained)
        self._transform = config.preprocess.transform()

    def token_learner_kwargs(self) -> dict:
        """The token learner's shape from the config (every method that has one builds it alike)."""
        c = self.config
        return dict(
            num_tokens=c.num_tokens,
            hidden_dim=c.hidden_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            output_rms=c.output_rms,
        )

    # ----- construction ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        foundation: Foundation,
        backbone: str = "efficientnet_b0",
        num_tokens: int = 8,
        pretrained: bool | str = False,
        image_size: int | None = None,
        method: str = "isa",
        **kwargs: Any,
    ) -> QueryEncoder:
        """A fresh encoder whose output space is ``foundation``'s word embeddings."""
        problems = setting_problems(foundation, method, num_tokens, kwargs.get("output_stride"))
        if problems:
            raise ConfigError("; ".join(problems))
        impl = get_method(method)
        method = impl.name
        if not impl.has_backbone:
            backbone = "foundation"
            pretrained = False
            for key, value in impl.create_kwargs(foundation, kwargs).items():
                kwargs.setdefault(key, value)
            kwargs.setdefault("preprocess", PreprocessConfig())
        if impl.fixed_tokens is not None:
            num_tokens = impl.fixed_tokens
        spec = resolve_backbone(backbone) if impl.has_backbone else None
        preprocess = kwargs.pop("preprocess", None)
        if preprocess is None and spec is not None:
            from timm.models import get_pretrained_cfg

            pcfg = get_pretrained_cfg(spec.timm_name)
            preprocess = PreprocessConfig(
                image_size=image_size or spec.image_size,
                mean=tuple(getattr(pcfg, "mean", None) or IMAGENET_MEAN),
                std=tuple(getattr(pcfg, "std", None) or IMAGENET_STD),
            )
        config = QueryEncoderConfig(
            backbone=backbone,
            word_dim=foundation.word_dim,
            num_tokens=num_tokens,
            output_rms=foundation.word_embedding_rms(),
            preprocess=preprocess,
            foundation_id=foundation.name,
            foundation_fingerprint=foundation.fingerprint,
            backbone_pretrained=str(pretrained) if pretrained else "none",
            method=method,
            **kwargs,
        )
        return cls(config, backbone_pretrained=pretrained)

    # ----- inference ------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def word_dim(self) -> int:
        return self.config.word_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        return self._transform(load_image(image))

    @property
    def uses_foundation_features(self) -> bool:
        """True for the symmetric baselines, which need the large image encoder at query time."""
        return self.method_impl.reads_foundation

    def forward(
        self,
        pixels: torch.Tensor | None = None,
        *,
        global_features: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        return_maps: bool = False,
    ) -> Any:
        """Pseudo tokens ``[B, N, word_dim]`` (with ``return_maps``, a pair with the attention maps).

        What each method reads is its ``reads``: ``isa`` takes normalised ``pixels [B, 3, H, W]``,
        ``isa-symmetric`` the foundation's ``local_features [B, P, D]``, ``pic2word`` its
        ``global_features [B, D]``.
        """
        return self.method_impl.forward(self, pixels, global_features, local_features, return_maps)

    @torch.no_grad()
    def encode_images(self, images: Iterable[ImageSource], foundation: Foundation | None = None) -> torch.Tensor:
        """Pseudo tokens for image files/bytes/PIL images (symmetric baselines need ``foundation``)."""
        images = list(images)
        if not self.uses_foundation_features:
            pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
            return self(pixels)
        if foundation is None:
            raise ValueError(f"method {self.config.method!r} reads the foundation's features: pass foundation=")
        self.check_foundation(foundation)
        feats = foundation.encode_image_features(foundation.preprocess_batch(images))
        return self(**self.method_impl.inputs_from_features(self, feats))

    @property
    def fingerprint(self) -> str:
        """Hash of weights and config: payloads carry it so the server can refuse stale devices."""
        from ..fingerprint import hash_state_dict

        cfg = self.config.to_dict()
        cfg.pop("isacir_version", None)
        return hash_state_dict(self.state_dict(), extra=cfg)

    # ----- compatibility --------------------------------------------------------------------------
    def check_foundation(self, foundation: Foundation | str) -> None:
        """Refuse a foundation other than the one this encoder was trained for."""
        fp = foundation if isinstance(foundation, str) else foundation.fingerprint
        name = "<fingerprint>" if isinstance(foundation, str) else foundation.name
        if fp != self.config.foundation_fingerprint:
            raise FoundationMismatchError(
                f"query encoder was built for foundation {self.config.foundation_id!r} "
                f"(fingerprint {self.config.foundation_fingerprint}) but is being used with {name!r} "
                f"(fingerprint {fp}). Its pseudo tokens only make sense to the former: load that "
                "foundation, or train a query encoder for this one." + same_name_hint(self.config.foundation_id, name)
            )
        if not isinstance(foundation, str) and foundation.word_dim != self.word_dim:
            raise FoundationMismatchError(
                f"query encoder emits D={self.word_dim} but {name!r} expects D={foundation.word_dim}"
            )

    # ----- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (a crash leaves the old folder)."""
        return save_folder(directory, self, {CONFIG_NAME: self.config.to_dict()}, WEIGHTS_NAME)

    @staticmethod
    def load_config(directory: str | os.PathLike) -> QueryEncoderConfig:
        """The checkpoint's config alone (cheap: lets a caller pick the foundation before loading)."""
        raw = read_config(directory, CONFIG_NAME, WEIGHTS_NAME, "isacir-query-encoder", "query-encoder checkpoint")
        return QueryEncoderConfig.from_dict(raw)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, foundation: Foundation | str | None = None, map_location: str = "cpu"
    ) -> QueryEncoder:
        """Load a folder written by :meth:`save_pretrained`; checks the foundation when given."""
        config = cls.load_config(directory)
        model = cls(config, backbone_pretrained=False)
        if foundation is not None:
            model.check_foundation(foundation)
        load_weights(model, Path(directory) / WEIGHTS_NAME, map_location)
        return model.eval()
