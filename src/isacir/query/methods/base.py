"""The method interface and its registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...foundation import Foundation, ImageFeatures
    from ..config import QueryEncoderConfig
    from ..encoder import QueryEncoder

_REGISTRY: dict[str, type[QueryMethod]] = {}
_ALIASES: dict[str, str] = {}


class QueryMethod:
    """How one method turns an image into pseudo tokens.

    A method builds its sub-modules onto the encoder (so their parameter names, and with them
    checkpoints and fingerprints, are the encoder's own), says which input it reads, and runs the
    forward. Class attributes describe it to the trainer and to export without any name checks.
    """

    #: The one spelling used in configs, checkpoints and on the command line.
    name: ClassVar[str]
    #: Other spellings accepted on input (for example ``isa_symmetric``).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: What ``forward`` reads: ``pixels``, the foundation's ``local`` patch features or its ``global`` feature.
    reads: ClassVar[str] = "pixels"
    #: A light backbone on pixels (only such a method runs on a device without the large model).
    has_backbone: ClassVar[bool] = False
    #: A method that always writes this many tokens, whatever was asked.
    fixed_tokens: ClassVar[int | None] = None
    #: Training settings this method never reads (left out of cache keys; a run ignores them).
    unused_settings: ClassVar[tuple[str, ...]] = ()
    #: One line for ``isacir methods`` and the docs.
    summary: ClassVar[str] = ""

    @property
    def reads_foundation(self) -> bool:
        """True when query time needs the large image encoder (a symmetric baseline)."""
        return self.reads != "pixels"

    def setting_problems(self, foundation: Foundation | None, num_tokens: int, output_stride: int | None) -> list[str]:
        """Every problem with these settings (without a foundation, its token limit is not checked)."""
        from ..backbones import output_stride_problem

        problems = []
        if output_stride is not None and not self.has_backbone:
            problems.append(f"output_stride applies to the isa backbone only, not to {self.name}")
        elif stride_problem := output_stride_problem(output_stride):
            problems.append(stride_problem)
        if self.fixed_tokens is None:
            if foundation is not None and not 1 <= num_tokens <= foundation.max_pseudo_tokens():
                problems.append(
                    f"num_tokens must be between 1 and {foundation.max_pseudo_tokens()} for "
                    f"{foundation.name}, got {num_tokens}"
                )
            elif foundation is None and num_tokens < 1:
                problems.append(f"num_tokens must be at least 1, got {num_tokens}")
        return problems

    def create_kwargs(self, foundation: Foundation, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Config fields this method sets when an encoder is created (the backbone-free ones)."""
        return {}

    def build(self, encoder: QueryEncoder, config: QueryEncoderConfig, backbone_pretrained: bool | str) -> None:
        raise NotImplementedError

    def forward(
        self,
        encoder: QueryEncoder,
        pixels: torch.Tensor | None,
        global_features: torch.Tensor | None,
        local_features: torch.Tensor | None,
        return_maps: bool,
    ) -> Any:
        raise NotImplementedError

    def inputs_from_features(self, encoder: QueryEncoder, feats: ImageFeatures) -> dict[str, torch.Tensor]:
        """Keyword inputs of ``forward`` from the foundation's image features (symmetric methods)."""
        raise ConfigError(f"method {self.name!r} reads pixels, not the foundation's features")

    def resume_checks(self, config: QueryEncoderConfig, asked: Any) -> dict[str, tuple[Any, Any]]:
        """(checkpoint value, asked value) for every setting a resumed run of this method must keep."""
        checks: dict[str, tuple[Any, Any]] = {"method": (config.method, asked.method)}
        if self.fixed_tokens is None:
            checks["tokens"] = (config.num_tokens, asked.tokens)
        return checks


def register_method(cls: type[QueryMethod]) -> type[QueryMethod]:
    """Class decorator: make a method available by its name and aliases."""
    from . import BUILTIN

    if cls.name in BUILTIN and tuple(cls.aliases) != BUILTIN[cls.name]:
        raise ValueError(
            f"built-in method {cls.name!r} declares aliases {tuple(cls.aliases)}, "
            f"but isacir.query.methods.BUILTIN lists {BUILTIN[cls.name]}: make them agree"
        )
    for key in (cls.name, *cls.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != cls.name:
            raise ValueError(f"method name {key!r} is already taken by {owner!r}")
        _ALIASES[key] = cls.name
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def canonical_method(name: str) -> str:
    """The registered spelling of ``name`` (an alias maps to its method); unknown names raise."""
    try:
        return _ALIASES[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r} (choose one of {', '.join(_REGISTRY)})") from None


def get_method(name: str) -> QueryMethod:
    return _REGISTRY[canonical_method(name)]()
