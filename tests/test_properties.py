"""Property tests: random and mutated inputs meet only the errors they are meant to meet."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from serve_helpers import build_service

from isacir.edge.payload import DTYPES, PayloadError, decode_payload, encode_payload

FP = "0123456789abcdef"


@given(st.binary(max_size=4096))
@settings(max_examples=400, deadline=None)
def test_random_bytes_raise_nothing_but_the_payload_error(data):
    try:
        decode_payload(data)
    except PayloadError as exc:
        assert exc.code  # every rejection names its check


def _valid_payload(dtype: str = "int8") -> bytes:
    rng = np.random.default_rng(0)
    return encode_payload((rng.standard_normal((4, 16)) * 0.1).astype(np.float32), FP, dtype)


@given(
    st.sampled_from(sorted(DTYPES)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(-64, 64),
)
@settings(max_examples=300, deadline=None)
def test_mutated_payloads_are_rejected_with_a_code_or_decode_to_finite_tokens(dtype, flips, resize):
    data = bytearray(_valid_payload(dtype))
    for pos, value in flips:
        data[pos % len(data)] = value
    if resize < 0:
        data = data[:resize]
    else:
        data += bytes(resize)
    try:
        p = decode_payload(bytes(data))
    except PayloadError as exc:
        assert exc.code
    else:
        assert np.isfinite(p.tokens).all()


token_arrays = st.tuples(st.integers(1, 12), st.integers(1, 48)).flatmap(
    lambda shape: arrays(
        np.float32, shape, elements=st.floats(-8.0, 8.0, allow_nan=False, allow_subnormal=False, width=32)
    )
)


@given(token_arrays, st.sampled_from(sorted(DTYPES)))
@settings(max_examples=300, deadline=None)
def test_encode_decode_round_trips_for_every_dtype(tokens, dtype):
    p = decode_payload(encode_payload(tokens, FP, dtype), expected_dim=tokens.shape[1], expected_tokens=len(tokens))
    assert p.fingerprint == FP and p.dtype == dtype and p.tokens.shape == tokens.shape
    if dtype == "fp16":
        np.testing.assert_array_equal(p.tokens, tokens.astype(np.float16).astype(np.float32))
    else:
        levels = 127 if dtype == "int8" else 7
        step = np.abs(tokens).max(axis=1, keepdims=True) / levels
        # symmetric rounding to the token's own grid: never more than half a step off
        assert (np.abs(p.tokens - tokens) <= step / 2 * (1 + 1e-5) + 1e-7).all()


# ----- uploads ------------------------------------------------------------------------------------
def _encoded(fmt: str) -> bytes:
    arr = np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _png_with_size(w: int, h: int) -> bytes:
    """A PNG header that claims a huge image (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


JPEG, PNG = _encoded("JPEG"), _encoded("PNG")
DAMAGED = {
    "empty": b"",
    "text": b"this is not an image at all",
    "truncated jpeg": JPEG[: len(JPEG) // 2],
    "truncated png": PNG[: len(PNG) // 2],
    "png bad crc": PNG[:29] + b"\x00\x00\x00\x00" + PNG[33:],
    "jpeg header only": JPEG[:20],
    "png bomb header": _png_with_size(60000, 60000),
    "gif no frames": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "zeros": bytes(2048),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory, openclip_fnd):
    app, state, _ = build_service(tmp_path_factory.mktemp("props"), openclip_fnd, api_key=None)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_the_damaged_corpus_gets_4xx_on_search_and_on_upload(client, name):
    data = DAMAGED[name]
    r = client.post("/v1/search", files={"image": ("x", data, "application/octet-stream")}, data={"text": "red"})
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.json()["code"]
    r = client.post("/v1/gallery", files=[("images", ("x", data, "application/octet-stream"))])
    assert 400 <= r.status_code < 500 and r.json()["rejected"][0]["filename"] == "x", (name, r.text)


@given(
    st.sampled_from(["jpeg", "png"]),
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=12),
    st.integers(-400, 0),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_images_never_get_a_server_error(client, fmt, flips, cut):
    data = bytearray(JPEG if fmt == "jpeg" else PNG)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: len(data) + cut] if cut else data
    r = client.post("/v1/search", files={"image": ("m", bytes(data), "image/" + fmt)}, data={"text": "red"})
    assert r.status_code in (200, 415, 422), r.text  # an image, not one we read, or a damaged one
    if r.status_code != 200:
        assert r.json()["code"] in {"corrupt", "truncated", "unsupported", "empty", "too_large"}, r.text
