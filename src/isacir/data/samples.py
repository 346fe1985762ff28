"""Natural test photos for size and speed measurements.

scikit-image ships a few real photographs (astronaut, cat, coffee, rocket) inside its wheel, so
they are available offline. Without it we fall back to a synthetic image with a natural 1/f
spectrum and say so in the report.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def natural_photo(name: str = "astronaut") -> tuple[Image.Image, str]:
    """Return ``(image, source description)``."""
    try:
        from skimage import data

        return Image.fromarray(getattr(data, name)()).convert("RGB"), f"scikit-image:{name}"
    except Exception:
        return pink_noise_image(), "synthetic-1/f-noise"


def pink_noise_image(size: int = 512, seed: int = 0) -> Image.Image:
    """Colour noise with a 1/f amplitude spectrum, the average spectrum of natural scenes."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / f
        img = np.real(np.fft.ifft2(spectrum))
        img = (img - img.mean()) / (img.std() + 1e-8)
        channels.append(np.clip(128 + 40 * img, 0, 255))
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8), "RGB")


def center_square(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((size, size), Image.Resampling.BICUBIC)


def jpeg_size(image: Image.Image, quality: int = 90) -> int:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.tell()
