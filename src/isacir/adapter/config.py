"""What an adapter is and what it belongs to: the config saved beside its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .._version import __version__
from ..errors import FoundationMismatchError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
REPORT_NAME = "report.json"
MODEL_TYPE = "isacir-query-adapter"


class AdapterMismatchError(FoundationMismatchError):
    """An adapter trained for another query encoder or foundation than the one it is used with."""


@dataclass
class AdapterConfig:
    """What an adapter is and what it belongs to (the fingerprints are checked at every load)."""

    word_dim: int
    num_tokens: int
    query_encoder_fingerprint: str
    foundation_fingerprint: str
    foundation_id: str = ""
    template: str = ""
    hidden: int = 256
    token_scale: float = 1.0
    #: word-piece ids with a trainable row, and the operator words they came from (for people)
    vocab_ids: list[int] = field(default_factory=list)
    vocab_words: list[str] = field(default_factory=list)
    #: LoRA on the text tower (rank 0: none): the adapted layers' names in the foundation and
    #: their ``[in, out]`` features, so a folder loads without its foundation at hand
    lora_rank: int = 0
    lora_alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=list)
    lora_shapes: list[list[int]] = field(default_factory=list)
    #: LoRA on the text tower's attention modules (their input and output projections): their
    #: names in the foundation and their embedding widths (empty: none)
    lora_attention: list[str] = field(default_factory=list)
    lora_attention_dims: list[int] = field(default_factory=list)
    #: the query head's width (0: none), the foundation's joint embedding size when on
    query_head: int = 0
    interpolation: float = 1.0
    #: the top-1 guard (:mod:`isacir.adapter.guard`): the zero-shot top-1 stays first unless the
    #: adapter prefers its own by this cosine margin (0: off, the adapted order stands)
    guard_margin: float = 0.0
    created: float = 0.0
    isacir_version: str = __version__
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdapterConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def architecture(self) -> dict[str, Any]:
        """The part of the config folded into the fingerprint: everything that changes answers."""
        return {
            "model_type": MODEL_TYPE,
            "word_dim": self.word_dim,
            "num_tokens": self.num_tokens,
            "hidden": self.hidden,
            "token_scale": self.token_scale,
            "vocab_ids": self.vocab_ids,
            "query_encoder_fingerprint": self.query_encoder_fingerprint,
            "foundation_fingerprint": self.foundation_fingerprint,
            **(
                {"lora": [self.lora_rank, self.lora_alpha, self.lora_targets, self.lora_shapes]}
                if self.lora_rank
                else {}
            ),
            **(
                {"lora_attention": [self.lora_attention, self.lora_attention_dims]}
                if self.lora_rank and self.lora_attention
                else {}
            ),
            **({"query_head": self.query_head} if self.query_head else {}),
            "interpolation": self.interpolation,
            **({"guard_margin": self.guard_margin} if self.guard_margin else {}),
        }
