"""Name-based factory for foundations, in the spirit of ``open_clip.create_model``.

Names look like ``openclip:ViT-L-14/openai``, ``openclip:ViT-B-32@/ckpt.pt`` or
``hf-blip:Salesforce/blip-itm-large-coco``: a family prefix, then whatever that family parses.
The built-in families register themselves when first needed (importing them loads torchvision
and more, which naming a foundation should not); another family registers with
:func:`~isacir.foundation.registry.register_family` before its first use.
"""

from __future__ import annotations

import difflib

import torch

from ..errors import UnknownModelError
from .base import Foundation
from .registry import _FAMILIES, _FAMILY_HELP, inference_dtype, resolve_device


def _ensure_builtin_families() -> None:
    from . import blip, openclip  # noqa: F401  (registration side effect)


def list_families() -> dict[str, str]:
    """Family prefix -> usage string."""
    _ensure_builtin_families()
    return dict(_FAMILY_HELP)


def parse_foundation_name(name: str) -> tuple[str, str]:
    _ensure_builtin_families()
    if not isinstance(name, str) or ":" not in name:
        raise UnknownModelError(
            f"foundation name {name!r} has no family prefix; use one of: "
            + ", ".join(f"{p}:{u}" for p, u in _FAMILY_HELP.items())
        )
    family, spec = name.split(":", 1)
    if family not in _FAMILIES:
        close = difflib.get_close_matches(family, list(_FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownModelError(
            f"unknown foundation family {family!r} in {name!r}{hint}; known families: {', '.join(_FAMILIES)}"
        )
    if not spec:
        raise UnknownModelError(f"foundation name {name!r} names no model; usage: {family}:{_FAMILY_HELP[family]}")
    return family, spec


def create_foundation(name: str, device: str | torch.device = "cpu", precision: str = "auto") -> Foundation:
    """Build a frozen foundation from its name. Local paths always work offline.

    ``device`` takes ``auto``; on a GPU, inference runs under autocast (``precision``: ``auto``
    picks bf16 where supported, else fp16; ``fp32`` turns it off). Outputs are always float32.
    """
    family, spec = parse_foundation_name(name)
    dev = resolve_device(device)
    model = _FAMILIES[family](spec, name)
    model = model.to(dev).freeze()
    model.inference_dtype = inference_dtype(dev, precision)
    return model
