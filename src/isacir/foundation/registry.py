"""The registry of foundation families, and the devices they run on.

A leaf: the families (:mod:`.openclip`, :mod:`.blip`) import it to register themselves, and the
factory (:mod:`.factory`) imports both, so nothing here imports a family.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import IsacirError
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
