"""Large, frozen vision-language foundations behind one interface (gallery side)."""

from .base import Foundation, ImageFeatures
from .registry import (
    DeviceError,
    create_foundation,
    list_families,
    parse_foundation_name,
    register_family,
    resolve_device,
)

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
