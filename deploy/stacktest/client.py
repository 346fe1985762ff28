"""HTTPS calls to a stack, and the random images it is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def random_png(seed: list[int]) -> bytes:
    """A 40 x 40 PNG of random pixels: a gallery image no other seed repeats (the installed images
    take seeds [100, i] and [101, i], the writers [1, i] and [2, i])."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def call(s: Any, method: str, url: str, **kw: Any) -> Any:
    """One request, waiting out the key's rate limit (429 and its Retry-After) rather than failing."""
    for _ in range(50):
        r = s.request(method, url, **kw)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))
    return r


def ok(resp: Any) -> dict:
    if resp.status_code >= 300:
        raise RuntimeError(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]}")
    return resp.json()


def search_by_upload(s: Any, url: str, image: Path, text: str = "in red") -> dict:
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    return ok(call(s, "POST", f"{url}/v1/search", files=files, data={"text": text, "k": 5}))


def answers(s: Any, url: str, images: list[Path]) -> list[list[tuple[int, float]]]:
    return [[(r["id"], round(r["score"], 5)) for r in search_by_upload(s, url, im)["results"]] for im in images]


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(1)
