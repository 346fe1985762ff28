"""Name-based factory for foundations, in the spirit of ``open_clip.create_model``.

Names look like ``openclip:ViT-L-14/openai``, ``openclip:ViT-B-32@/ckpt.pt`` or
``hf-blip:Salesforce/blip-itm-large-coco``: a family prefix, then whatever that family parses.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch

from ..errors import IsacirError, UnknownModelError
from .base import Foundation

FamilyLoader = Callable[[str, str], Foundation]

_FAMILIES: dict[str, FamilyLoader] = {}
_FAMILY_HELP: dict[str, str] = {}


class DeviceError(IsacirError):
    """A device that this machine or this torch does not have."""


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


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked now:
    asking for a GPU that is not there is a clear error, not a crash in the first forward pass."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {spec}: this torch sees no CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(
                    f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0"
                )
        return torch.device(spec)
    raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference on ``device``: bf16 where the GPU has it, else fp16; none on a CPU."""
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise DeviceError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


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
