"""The light, on-device side: backbone + adaptive token learner -> pseudo tokens.

The exports load on first use, as :mod:`isacir.training`'s do: settings name a method and the
command line checks them without importing torch (``isacir train`` reports a bad setting at once).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backbones import BackboneSpec, create_backbone, list_backbones, register_backbone, resolve_backbone
    from .config import QueryEncoderConfig
    from .encoder import QueryEncoder
    from .methods import QueryMethod, canonical_method, get_method, list_methods, register_method
    from .methods.pic2word import Pic2WordMapper
    from .preprocess import PreprocessConfig
    from .token_learner import AdaptiveTokenLearner

_EXPORTS = {
    "BackboneSpec": ".backbones",
    "create_backbone": ".backbones",
    "list_backbones": ".backbones",
    "register_backbone": ".backbones",
    "resolve_backbone": ".backbones",
    "QueryEncoder": ".encoder",
    "QueryEncoderConfig": ".config",
    "QueryMethod": ".methods",
    "canonical_method": ".methods",
    "get_method": ".methods",
    "list_methods": ".methods",
    "register_method": ".methods",
    "Pic2WordMapper": ".methods.pic2word",
    "PreprocessConfig": ".preprocess",
    "AdaptiveTokenLearner": ".token_learner",
}

__all__ = [
    "AdaptiveTokenLearner",
    "BackboneSpec",
    "Pic2WordMapper",
    "PreprocessConfig",
    "QueryEncoder",
    "QueryEncoderConfig",
    "QueryMethod",
    "canonical_method",
    "create_backbone",
    "get_method",
    "list_backbones",
    "list_methods",
    "register_backbone",
    "register_method",
    "resolve_backbone",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isacir.query' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
