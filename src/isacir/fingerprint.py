"""Content fingerprints of model weights.

The edge side, the query-encoder checkpoint and the gallery must agree on exactly which
foundation produced a word-embedding space and an index. Names and tags are not enough (a
fine-tuned checkpoint keeps its name), so the fingerprint hashes every tensor's bytes together with
the architecture description.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

FINGERPRINT_CHARS = 16


def hash_state_dict(state_dict: Mapping[str, torch.Tensor], extra: Any = None) -> str:
    """Return a short hex digest over names, dtypes, shapes and raw bytes of all tensors.

    ``extra`` (any JSON-serialisable value, e.g. an architecture config) is folded in as well so
    that two architectures with coincidentally equal tensors still differ.
    """
    h = hashlib.blake2b(digest_size=16)
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]  # ndarray is a buffer
    return h.hexdigest()[:FINGERPRINT_CHARS]
