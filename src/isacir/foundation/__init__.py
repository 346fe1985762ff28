"""Large, frozen vision-language foundations behind one interface (gallery side)."""

from .base import Foundation, ImageFeatures
from .registry import create_foundation, list_families, parse_foundation_name, register_family

__all__ = [
    "Foundation",
    "ImageFeatures",
    "create_foundation",
    "list_families",
    "parse_foundation_name",
    "register_family",
]
