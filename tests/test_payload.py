"""Token payload codec: round trips, sizes, and each rejection with its code."""

import json
import struct
import zlib

import numpy as np
import pytest

from isacir.edge.payload import (
    PayloadError,
    decode_payload,
    encode_payload,
    payload_from_json,
    payload_to_json,
)

FP = "0123456789abcdef"


def tokens(n=8, d=768, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, d)) * 0.02).astype(np.float32)


@pytest.mark.parametrize(
    "dtype,size,max_rel",
    [
        ("fp16", 26 + 8 * 768 * 2 + 4, 1e-3),
        ("int8", 26 + 32 + 8 * 768 + 4, 1 / 127),
        ("int4", 26 + 32 + 8 * 768 // 2 + 4, 1 / 7),
    ],
)
def test_round_trip_and_size(dtype, size, max_rel):
    t = tokens()
    data = encode_payload(t, FP, dtype)
    assert len(data) == size
    p = decode_payload(data, expected_dim=768, expected_tokens=8)
    assert p.fingerprint == FP and p.dtype == dtype and p.tokens.shape == (8, 768)
    # error bounded by half a quantisation step of each token's own scale
    bound = np.abs(t).max(axis=1, keepdims=True) * max_rel
    assert (np.abs(p.tokens - t) <= bound + 1e-6).all()


def test_odd_count_int4_packs_and_unpacks():
    t = tokens(3, 5)
    p = decode_payload(encode_payload(t, FP, "int4"))
    assert p.tokens.shape == (3, 5)


def test_json_form_round_trips():
    data = encode_payload(tokens(2, 4), FP, "int8")
    text = payload_to_json(data)
    obj = json.loads(text)
    assert obj["num_tokens"] == 2 and obj["dim"] == 4 and obj["dtype"] == "int8" and obj["fingerprint"] == FP
    assert payload_from_json(text) == data
    with pytest.raises(PayloadError) as e:
        payload_from_json('{"base64": "!!"}')
    assert e.value.code == "json"


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _code(data, **kw):
    with pytest.raises(PayloadError) as e:
        decode_payload(data, **kw)
    return e.value.code


def test_each_rejection_has_its_code():
    good = encode_payload(tokens(2, 4), FP, "fp16")
    body = good[:-4]
    assert _code(b"XXXX" + good[4:]) == "magic"
    assert _code(_recrc(body[:4] + bytes([9]) + body[5:])) == "version"
    assert _code(_recrc(body[:5] + bytes([7]) + body[6:])) == "dtype"
    assert _code(good, expected_dim=5) == "shape"
    assert _code(good, expected_tokens=3) == "shape"
    assert _code(good[:-1]) == "length"
    assert _code(good[:10]) == "length"
    flipped = bytearray(good)
    flipped[30] ^= 0xFF
    assert _code(bytes(flipped)) == "checksum"
    nan_body = bytearray(body)
    nan_body[26:28] = np.array([np.nan], "<f2").tobytes()
    assert _code(_recrc(bytes(nan_body))) == "nonfinite"
    bad_fp = body[:10] + b"ZZZZZZZZZZZZZZZZ" + body[26:]
    assert _code(_recrc(bad_fp)) == "fingerprint"
    assert _code("not bytes") == "type"


def test_encoder_rejects_bad_tokens():
    for bad, code in [
        (np.zeros((2, 3, 4), np.float32), "shape"),
        (np.full((2, 4), np.nan, np.float32), "nonfinite"),
        (np.zeros((2, 4), np.int32), "dtype"),
        (np.zeros((0, 4), np.float32), "shape"),
    ]:
        with pytest.raises(PayloadError) as e:
            encode_payload(bad, FP)
        assert e.value.code == code
    with pytest.raises(PayloadError) as e:
        encode_payload(tokens(2, 4), "short")
    assert e.value.code == "fingerprint"
    with pytest.raises(PayloadError) as e:
        encode_payload(np.full((1, 2), 1e6, np.float32), FP, "fp16")
    assert e.value.code == "nonfinite"
