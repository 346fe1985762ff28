"""Safe image decoding shared by every entry point (training, indexing, serving, edge).

Real photo collections contain CMYK JPEGs, 16-bit PNGs, palette GIFs, transparent logos and the
occasional decompression bomb. All of them must come out as 8-bit RGB or as an
:class:`~isacir.errors.ImageDecodeError` with a machine-readable ``reason``; never a crash.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]

#: Default pixel cap (width*height). 64 MP covers any camera; a bomb is far larger.
DEFAULT_MAX_PIXELS = 64_000_000

#: Extensions treated as images when walking folders.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size}>"
    return f"<{type(source).__name__}>"


def _open(source: ImageSource) -> Image.Image:
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageDecodeError(f"{name}: no such file", reason="missing")
        if path.is_dir():
            raise ImageDecodeError(f"{name}: is a directory, not an image", reason="unsupported")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{name}: empty file (0 bytes)", reason="empty")
        fp: BinaryIO = open(path, "rb")
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageDecodeError(f"{name}: empty input (0 bytes)", reason="empty")
        fp = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        fp = source  # type: ignore[assignment]
    else:
        raise ImageDecodeError(f"cannot read an image from {type(source).__name__}", reason="unsupported")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns; we apply our own, explicit limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: {exc}", reason="too_large") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a recognised image format (corrupt?)", reason="corrupt") from None
    except OSError as exc:
        raise ImageDecodeError(f"{name}: cannot open image: {exc}", reason="corrupt") from None


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float32)
        arr = arr * 255.0 if float(np.nanmax(arr)) <= 1.0 else arr
    else:
        arr = arr.astype(np.float64)
        if arr.max() > 255:  # 16-bit range
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels are composited on ``background``."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode in {"I", "F"} or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"unsupported image mode {img.mode!r}: {exc}", reason="unsupported") from None


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB image, applying EXIF orientation.

    Animated images yield their first frame. Raises :class:`ImageDecodeError` whose ``reason`` is
    one of ``missing, empty, corrupt, truncated, too_large, unsupported``.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        img = _open(source)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})", reason="corrupt")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)",
            reason="too_large",
        )
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(f"{name}: cannot decode image data: {exc}", reason=reason) from None
    return to_rgb(img, background)
