"""isacir: asymmetric zero-shot composed image retrieval (Image2Sentence, Du et al., ICLR 2024).

Heavy submodules (torch, open_clip, transformers) are imported lazily so that light consumers,
such as the edge runtime, can import :mod:`isacir` without them.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    CheckpointError,
    FoundationLoadError,
    FoundationMismatchError,
    ImageDecodeError,
    IsacirError,
    ModelLoadError,
    PseudoTokenError,
    TemplateError,
    UnknownModelError,
)

__all__ = [
    "__version__",
    "CheckpointError",
    "FoundationLoadError",
    "FoundationMismatchError",
    "ImageDecodeError",
    "IsacirError",
    "ModelLoadError",
    "PseudoTokenError",
    "TemplateError",
    "UnknownModelError",
    "create_foundation",
    "QueryEncoder",
]


def __getattr__(name: str):
    if name == "create_foundation":
        from .foundation import create_foundation

        return create_foundation
    if name == "QueryEncoder":
        from .query import QueryEncoder

        return QueryEncoder
    raise AttributeError(f"module 'isacir' has no attribute {name!r}")
