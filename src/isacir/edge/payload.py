"""The token payload: what travels from the device to the server instead of the photo.

Binary layout (little-endian), version 1::

    magic      4 bytes  b"ISAT"
    version    u8       1
    dtype      u8       1 = fp16, 2 = int8 (+ per-token fp32 scale), 3 = int4 (+ per-token fp32 scale)
    n_tokens   u16
    dim        u16
    fprint     16 bytes query-encoder fingerprint, ASCII hex
    scales     n_tokens x f32          (int8 / int4 only)
    data       n_tokens x dim values   (fp16: 2 bytes each; int8: 1; int4: two per byte)
    crc32      u32      over everything before it

Decoding checks every field and raises :class:`PayloadError` with a specific ``code`` so the
server can answer 422 (malformed) or 409 (fingerprint mismatch) precisely. NumPy only: this
module runs on devices without torch.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"ISAT"
VERSION = 1
DTYPES = {"fp16": 1, "int8": 2, "int4": 3}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_HEADER = struct.Struct("<4sBBHH16s")
FINGERPRINT_LEN = 16
MAX_TOKENS = 256
MAX_DIM = 8192


class PayloadError(ValueError):
    """A payload that cannot be accepted; ``code`` names the check that failed."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass
class TokenPayload:
    tokens: np.ndarray  # [N, D] float32
    fingerprint: str
    dtype: str = "fp16"

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise PayloadError(f"tokens must have shape [N, D], got {tokens.shape}", "shape")
    n, d = tokens.shape
    if not (1 <= n <= MAX_TOKENS) or not (1 <= d <= MAX_DIM):
        raise PayloadError(f"token shape {tokens.shape} outside 1..{MAX_TOKENS} x 1..{MAX_DIM}", "shape")
    if not np.issubdtype(tokens.dtype, np.floating):
        raise PayloadError(f"tokens must be floating point, got {tokens.dtype}", "dtype")
    if not np.isfinite(tokens).all():
        raise PayloadError("tokens contain NaN or Inf", "nonfinite")
    return tokens.astype(np.float32)


def _check_fingerprint(fp: str) -> bytes:
    raw = fp.encode("ascii", errors="replace")
    if len(raw) != FINGERPRINT_LEN or any(c not in b"0123456789abcdef" for c in raw):
        raise PayloadError(f"fingerprint must be {FINGERPRINT_LEN} lowercase hex characters, got {fp!r}", "fingerprint")
    return raw


def encode_payload(tokens: np.ndarray, fingerprint: str, dtype: str = "fp16") -> bytes:
    """Serialise ``[N, D]`` tokens; int8/int4 use symmetric per-token scales."""
    tokens = _check_tokens(tokens)
    fp = _check_fingerprint(fingerprint)
    if dtype not in DTYPES:
        raise PayloadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}", "dtype")
    n, d = tokens.shape
    parts = [_HEADER.pack(MAGIC, VERSION, DTYPES[dtype], n, d, fp)]
    if dtype == "fp16":
        with np.errstate(over="raise"):
            try:
                parts.append(tokens.astype("<f2").tobytes())
            except FloatingPointError:
                raise PayloadError("token values overflow fp16; use int8", "nonfinite") from None
    else:
        levels = 127 if dtype == "int8" else 7
        scale = np.abs(tokens).max(axis=1) / levels
        scale[scale == 0] = 1.0
        q = np.clip(np.round(tokens / scale[:, None]), -levels, levels).astype(np.int8)
        parts.append(scale.astype("<f4").tobytes())
        if dtype == "int8":
            parts.append(q.tobytes())
        else:
            nib = (q.astype(np.int16) & 0x0F).astype(np.uint8).reshape(-1)
            if len(nib) % 2:
                nib = np.append(nib, 0)
            parts.append((nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes())
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_payload(data: bytes, expected_dim: int | None = None, expected_tokens: int | None = None) -> TokenPayload:
    """Parse and validate; raises :class:`PayloadError` (``code``: magic, version, dtype, shape,
    length, checksum, nonfinite, fingerprint)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("payload must be bytes", "type")
    data = bytes(data)
    if len(data) < _HEADER.size + 4:
        raise PayloadError(f"payload too short ({len(data)} bytes)", "length")
    magic, version, dtype_code, n, d, fp = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"not an isacir token payload (magic {magic!r})", "magic")
    if version != VERSION:
        raise PayloadError(f"unsupported payload version {version} (this server reads {VERSION})", "version")
    if dtype_code not in DTYPE_NAMES:
        raise PayloadError(f"unknown dtype code {dtype_code}", "dtype")
    dtype = DTYPE_NAMES[dtype_code]
    if not (1 <= n <= MAX_TOKENS) or not (1 <= d <= MAX_DIM):
        raise PayloadError(f"token shape {n} x {d} out of range", "shape")
    if expected_dim is not None and d != expected_dim:
        raise PayloadError(f"payload has D={d}, the served query encoder uses D={expected_dim}", "shape")
    if expected_tokens is not None and n != expected_tokens:
        raise PayloadError(f"payload has N={n} tokens, the served query encoder uses N={expected_tokens}", "shape")
    scales_len = 0 if dtype == "fp16" else 4 * n
    data_len = {"fp16": 2 * n * d, "int8": n * d, "int4": (n * d + 1) // 2}[dtype]
    want = _HEADER.size + scales_len + data_len + 4
    if len(data) != want:
        raise PayloadError(f"payload is {len(data)} bytes, expected {want} for {n} x {d} {dtype}", "length")
    (crc,) = struct.unpack_from("<I", data, want - 4)
    if zlib.crc32(data[: want - 4]) != crc:
        raise PayloadError("payload checksum mismatch (corrupted in transit?)", "checksum")
    try:
        fingerprint = fp.decode("ascii")
        _check_fingerprint(fingerprint)
    except (UnicodeDecodeError, PayloadError):
        raise PayloadError("payload fingerprint is not 16 hex characters", "fingerprint") from None
    off = _HEADER.size
    if dtype == "fp16":
        tokens = np.frombuffer(data, "<f2", n * d, off).astype(np.float32).reshape(n, d)
    else:
        scale = np.frombuffer(data, "<f4", n, off).astype(np.float32)
        off += scales_len
        if dtype == "int8":
            q = np.frombuffer(data, np.int8, n * d, off).astype(np.float32)
        else:
            packed = np.frombuffer(data, np.uint8, data_len, off)
            nib = np.empty(2 * data_len, np.int16)
            nib[0::2], nib[1::2] = packed & 0x0F, packed >> 4
            q = np.where(nib >= 8, nib - 16, nib)[: n * d].astype(np.float32)
        if not np.isfinite(scale).all():
            raise PayloadError("payload scales contain NaN or Inf", "nonfinite")
        tokens = q.reshape(n, d) * scale[:, None]
    if not np.isfinite(tokens).all():
        raise PayloadError("payload tokens contain NaN or Inf", "nonfinite")
    return TokenPayload(tokens, fingerprint, dtype)


def payload_to_json(data: bytes) -> str:
    """Readable form for debugging: header fields, the tokens, and the original bytes in base64."""
    p = decode_payload(data)
    return json.dumps(
        {
            "version": VERSION,
            "dtype": p.dtype,
            "num_tokens": p.num_tokens,
            "dim": p.dim,
            "fingerprint": p.fingerprint,
            "bytes": len(data),
            "tokens": np.round(p.tokens, 6).tolist(),
            "base64": base64.b64encode(data).decode(),
        }
    )


def payload_from_json(text: str) -> bytes:
    """Inverse of :func:`payload_to_json` (the base64 field is authoritative)."""
    try:
        obj = json.loads(text)
        data = base64.b64decode(obj["base64"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"not a JSON token payload: {exc}", "json") from None
    decode_payload(data)
    return data
