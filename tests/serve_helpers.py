"""A real service on a real port for the HTTP and browser tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from isacir.serve.local import LocalServer, free_port  # noqa: F401  (tests import free_port from here)


def make_images(folder: Path, n: int, seed: int = 0, size: int = 48) -> list[Path]:
    """Distinct little images: a coloured square on a noisy background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        arr[y : y + size // 2, x : x + size // 2] = rng.integers(80, 255, 3, dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def start_server(app, port: int | None = None) -> LocalServer:
    """uvicorn in a background thread, returned once it accepts connections."""
    return LocalServer(app, port).start()


def build_service(
    tmp: Path,
    foundation,
    api_key: str | None = "test-key",
    max_upload_bytes: int = 2_000_000,
    n_images: int = 12,
    keys=None,
):
    """A gallery of generated images, an (untrained) query encoder, and the app over them."""
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app

    images = make_images(tmp / "gallery-images", n_images)
    gallery = Gallery.open_or_create(tmp / "gallery", foundation)
    gallery.index([str(tmp / "gallery-images")], foundation, progress=False)
    qe = QueryEncoder.create(foundation, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
    settings = ServeSettings(api_keys=(api_key,) if api_key else (), max_upload_bytes=max_upload_bytes, keys=keys)
    state = ServiceState(gallery, foundation, qe, settings)
    return create_app(state), state, images


def post_search(
    session, url: str, headers: dict, *, image=None, payload: str | None = None, text: str = "", k: int = 5
):
    """One search as a client makes it: a photo upload (thin client) or a base64 token payload."""
    if payload is not None:
        return session.post(
            f"{url}/v1/search/tokens", headers=headers, json={"payload": payload, "text": text, "k": k}, timeout=30
        )
    with open(image, "rb") as f:
        return session.post(
            f"{url}/v1/search",
            headers=headers,
            files={"image": ("ref.png", f, "image/png")},
            data={"text": text, "k": k},
            timeout=30,
        )


def chromium_or_skip() -> str:
    """The Chromium the browser tests drive (``ISACIR_CHROMIUM``, default Debian's); without one
    the calling module is skipped, except on CI, where ``.ci/run`` must have installed it."""
    import pytest

    chromium = os.environ.get("ISACIR_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            raise RuntimeError(f"Chromium not found at {chromium}: .ci/run must install Debian's chromium")
        pytest.skip(f"no Chromium at {chromium} (apt-get install chromium)", allow_module_level=True)
    return chromium


#: where browser tests leave their screenshots
ARTIFACTS = Path(
    __import__("os").environ.get(
        "ISACIR_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
    )
)
