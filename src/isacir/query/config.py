"""The query encoder's config: a leaf the methods, the encoder and the trainer all read.

The methods (:mod:`.methods`) build their parts from it, and the encoder builds itself through the
methods, so the config lives apart from both: nothing here imports either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from .._version import __version__
from ..compose import DEFAULT_TEMPLATE
from ..errors import CheckpointError
from .preprocess import PreprocessConfig


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
    #: ``isa`` (light backbone on pixels), ``isa-symmetric`` (token learner on the foundation's
    #: patch features) or ``pic2word`` (one token from the foundation's global feature).
    method: str = "isa"
    #: Foundation feature size consumed by the symmetric baselines (0 for ``isa``).
    input_dim: int = 0
    #: ``isa-symmetric``: patch features pooled to this grid (as in the training cache), or None.
    local_grid: Optional[int] = None
    backbone_pretrained: str = "none"
    #: ``isa``: the backbone's output stride (None = its own, usually 32); 16 keeps a 4x4 map at 64 px.
    output_stride: Optional[int] = None
    #: The prompt the tokens were trained in; search composes queries with the same one.
    template: str = DEFAULT_TEMPLATE
    #: The encoder this one continued from (``isacir train --init-from``), or None.
    parent_fingerprint: Optional[str] = None
    isacir_version: str = __version__

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["parent_fingerprint"] is None:
            del d["parent_fingerprint"]  # absent, not null: older encoders keep their fingerprints
        d["preprocess"] = self.preprocess.to_dict()
        d["model_type"] = "isacir-query-encoder"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QueryEncoderConfig:
        d = dict(d)
        d.pop("model_type", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"unknown query-encoder config fields {unknown} (written by a newer isacir?)")
        d["preprocess"] = PreprocessConfig.from_dict(d.get("preprocess", {}))
        return cls(**d)
