"""Name-based factory for foundations, in the spirit of ``open_clip.create_model``.

Names look like ``openclip:ViT-L-14/openai``, ``openclip:ViT-B-32@/ckpt.pt`` or
``hf-blip:Salesforce/blip-itm-large-coco``: a family prefix, then whatever that family parses.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch

from ..errors import UnknownModelError
from .base import Foundation

FamilyLoader = Callable[[str, str], Foundation]

_FAMILIES: dict[str, FamilyLoader] = {}
_FAMILY_HELP: dict[str, str] = {}


def register_family(prefix: str, usage: str) -> Callable[[FamilyLoader], FamilyLoader]:
    """Register a loader ``fn(spec, full_name) -> Foundation`` for names ``prefix:spec``."""

    def deco(fn: FamilyLoader) -> FamilyLoader:
        _FAMILIES[prefix] = fn
        _FAMILY_HELP[prefix] = usage
        return fn

    return deco


def list_families() -> dict[str, str]:
    """Family prefix -> usage string."""
    _ensure_builtin_families()
    return dict(_FAMILY_HELP)


def _ensure_builtin_families() -> None:
    from . import blip, openclip  # noqa: F401  (registration side effect)


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


def create_foundation(name: str, device: str | torch.device = "cpu") -> Foundation:
    """Build a frozen foundation from its name. Local paths always work offline."""
    family, spec = parse_foundation_name(name)
    model = _FAMILIES[family](spec, name)
    return model.to(device).freeze()
