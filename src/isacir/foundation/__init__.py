"""Large, frozen vision-language foundations behind one interface (gallery side)."""

from .base import Foundation, ImageFeatures
from .factory import create_foundation, list_families, parse_foundation_name
from .registry import DeviceError, register_family, resolve_device

__all__ = [
    "Foundation",
    "ImageFeatures",
    "create_foundation",
    "DeviceError",
    "resolve_device",
    "list_families",
    "parse_foundation_name",
    "register_family",
]
