"""Odd images are converted, bad ones are refused with a specific reason, never a crash."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from isacir.data.imageio import load_image
from isacir.errors import ImageDecodeError


def _png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_cmyk_jpeg_becomes_rgb():
    img = load_image(_png_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # pure magenta+yellow ink = red


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = load_image(_png_bytes(Image.fromarray(arr)))
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_rgba_is_composited_on_background():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img = load_image(_png_bytes(rgba))
    assert img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 255)
    assert load_image(_png_bytes(rgba), background=(0, 0, 0)).getpixel((1, 1)) == (0, 0, 0)


def test_palette_with_transparency_and_la():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_image(_png_bytes(p)).getpixel((0, 0)) == (10, 200, 30)
    p.info["transparency"] = 1
    assert load_image(_png_bytes(p, transparency=1)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_png_bytes(Image.new("LA", (4, 4), (100, 255)))).getpixel((0, 0)) == (100, 100, 100)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    img = load_image(buf.getvalue())
    r, g, _ = img.getpixel((3, 3))
    assert r > 200 and g < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 on display
    out = load_image(_png_bytes(img, "JPEG", exif=exif))
    assert out.size == (20, 10)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"this is not an image at all", "corrupt"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        load_image(data)
    assert info.value.reason == reason


def test_truncated_jpeg():
    data = _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError) as info:
        load_image(data[: len(data) // 2])
    assert info.value.reason == "truncated"


def test_decompression_bomb_is_refused_before_decoding():
    data = _png_bytes(Image.new("L", (400, 400)))
    with pytest.raises(ImageDecodeError, match="decompression bomb") as info:
        load_image(data, max_pixels=100_000)
    assert info.value.reason == "too_large"


def test_missing_and_zero_byte_files(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing"
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        load_image(tmp_path / "zero.jpg")
    assert info.value.reason == "empty"


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "RGBA", "P", "1", "LA", "F"])
def test_foundation_preprocess_accepts_odd_modes(foundation, mode):
    img = Image.new(mode, (40, 30))
    fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
    px = foundation.preprocess(_png_bytes(img, fmt))
    assert px.shape == (3, 32, 32) and torch.isfinite(px).all()
