"""QueryEncoder: light backbone + adaptive token learner + preprocessing (the edge side).

Checkpoints are Hugging Face style folders, ``config.json`` next to ``model.safetensors``. The
config pins the foundation (id and fingerprint) whose word-embedding space the tokens live in:
pseudo tokens are meaningless to any other text encoder, so loading against another foundation is
refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from .._version import __version__
from ..errors import CheckpointError, FoundationMismatchError
from ..imageio import ImageSource, load_image
from .backbones import create_backbone, resolve_backbone
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from .token_learner import AdaptiveTokenLearner

if TYPE_CHECKING:
    from ..foundation import Foundation

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class QueryEncoderConfig:
    backbone: str
    word_dim: int
    num_tokens: int = 8
    hidden_dim: int = 256
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    output_rms: float = 1.0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    foundation_id: str = ""
    foundation_fingerprint: str = ""
    method: str = "isa"
    backbone_pretrained: str = "none"
    isacir_version: str = __version__

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["model_type"] = "isacir-query-encoder"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QueryEncoderConfig":
        d = dict(d)
        d.pop("model_type", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"unknown query-encoder config fields {unknown} (written by a newer isacir?)")
        d["preprocess"] = PreprocessConfig.from_dict(d.get("preprocess", {}))
        return cls(**d)


class QueryEncoder(nn.Module):
    """Turns an image into ``[N, word_dim]`` pseudo tokens for one specific foundation."""

    def __init__(self, config: QueryEncoderConfig, backbone_pretrained: bool | str = False):
        super().__init__()
        self.config = config
        self.backbone, channels, _ = create_backbone(config.backbone, pretrained=backbone_pretrained)
        self.token_learner = AdaptiveTokenLearner(
            channels,
            config.word_dim,
            num_tokens=config.num_tokens,
            hidden_dim=config.hidden_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            output_rms=config.output_rms,
        )
        self._transform = config.preprocess.transform()

    # ----- construction ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        foundation: "Foundation",
        backbone: str = "efficientnet_b0",
        num_tokens: int = 8,
        pretrained: bool | str = False,
        image_size: int | None = None,
        **kwargs,
    ) -> "QueryEncoder":
        """A fresh encoder whose output space is ``foundation``'s word embeddings."""
        spec = resolve_backbone(backbone)
        max_n = foundation.max_pseudo_tokens()
        if not 1 <= num_tokens <= max_n:
            raise ValueError(f"num_tokens must be between 1 and {max_n} for {foundation.name}, got {num_tokens}")
        preprocess = kwargs.pop("preprocess", None)
        if preprocess is None:
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

    def forward(self, pixels: torch.Tensor, return_maps: bool = False):
        """``[B, 3, H, W]`` normalised pixels -> ``[B, N, word_dim]`` pseudo tokens."""
        features = self.backbone(pixels)[-1]
        return self.token_learner(features, return_maps=return_maps)

    @torch.no_grad()
    def encode_images(self, images: Iterable[ImageSource]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self(pixels)

    # ----- compatibility --------------------------------------------------------------------------
    def check_foundation(self, foundation: "Foundation | str") -> None:
        """Refuse a foundation other than the one this encoder was trained for."""
        fp = foundation if isinstance(foundation, str) else foundation.fingerprint
        name = "<fingerprint>" if isinstance(foundation, str) else foundation.name
        if fp != self.config.foundation_fingerprint:
            raise FoundationMismatchError(
                f"query encoder was built for foundation {self.config.foundation_id!r} "
                f"(fingerprint {self.config.foundation_fingerprint}) but is being used with {name!r} "
                f"(fingerprint {fp}). Its pseudo tokens only make sense to the former: load that "
                "foundation, or train a query encoder for this one."
            )
        if not isinstance(foundation, str) and foundation.word_dim != self.word_dim:
            raise FoundationMismatchError(
                f"query encoder emits D={self.word_dim} but {name!r} expects D={foundation.word_dim}"
            )

    # ----- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (a crash leaves the old folder)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_model(self, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            _replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, foundation: "Foundation | str | None" = None, map_location: str = "cpu"
    ) -> "QueryEncoder":
        """Load a folder written by :meth:`save_pretrained`; checks the foundation when given."""
        from safetensors.torch import load_model

        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not weights.is_file():
            raise CheckpointError(
                f"{directory} is not a query-encoder checkpoint: expected {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
        if raw.get("model_type") != "isacir-query-encoder":
            raise CheckpointError(f"{cfg_path} is not an isacir query-encoder config")
        config = QueryEncoderConfig.from_dict(raw)
        model = cls(config, backbone_pretrained=False)
        if foundation is not None:
            model.check_foundation(foundation)
        try:
            missing, unexpected = load_model(model, str(weights), strict=True, device=map_location)
        except Exception as exc:
            raise CheckpointError(f"weights in {weights} do not match its config: {exc}") from None
        return model.eval()


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap ``src`` into place of ``dst`` with renames only."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
