"""Edge runtime: on-device query encoding and the token payload. Imports no torch.

Install on a device with ``pip install isacir[edge]`` (onnxruntime, numpy, pillow).
"""

from .payload import PayloadError, TokenPayload, decode_payload, encode_payload, payload_from_json, payload_to_json
from .runner import EdgeEncoder, preprocess_image

__all__ = [
    "EdgeEncoder",
    "PayloadError",
    "TokenPayload",
    "decode_payload",
    "encode_payload",
    "payload_from_json",
    "payload_to_json",
    "preprocess_image",
]
