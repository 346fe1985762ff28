"""Numerical regression in open_clip's style: committed tiny models, committed expected outputs.

A refactor that changes what the query side writes, how the foundation composes, or the payload
bytes fails here loudly. Regenerate the fixture only for an intended change
(``tests/fixtures/regression/generate.py``) and record it in CHANGELOG.md.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "regression"


def _generator():
    spec = importlib.util.spec_from_file_location("regression_generate", FIXTURE / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def models():
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    gen = _generator()
    fnd = create_foundation(f"openclip:{gen.ARCH}@{FIXTURE / 'foundation'}")
    qe = QueryEncoder.from_pretrained(FIXTURE / "query_encoder", foundation=fnd)
    return gen, fnd, qe


def _compare(got: dict, want: dict) -> list[str]:
    """Names of every output that moved (floats to 1e-5; fingerprints and payload bytes exactly)."""
    moved = []
    for key in ("foundation_fingerprint", "query_encoder_fingerprint", "payload_fp16"):
        if got[key] != want[key]:
            moved.append(key)
    # int8 bytes hold float32 scales whose last bit follows 1e-8 noise in the tokens (it moved with
    # a NumPy release): the layout must be the same, the values within a thousandth of a step
    from isacir.edge.payload import decode_payload

    a_raw, b_raw = base64.b64decode(got["payload_int8"]), base64.b64decode(want["payload_int8"])
    a, b = decode_payload(a_raw), decode_payload(b_raw)
    step = np.abs(b.tokens).max() / 127
    if (
        len(a_raw) != len(b_raw)
        or a_raw[:26] != b_raw[:26]
        or (a.dtype, a.fingerprint) != (b.dtype, b.fingerprint)
        or np.abs(a.tokens - b.tokens).max() > 1e-3 * step
    ):
        moved.append("payload_int8")
    for key in ("tokens", "composed", "image_feature"):
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.shape != b.shape or np.abs(a - b).max() > 1e-4 * np.abs(b).max():
            moved.append(key)
    return moved


def test_outputs_match_the_committed_numbers(models):
    gen, fnd, qe = models
    want = json.loads((FIXTURE / "expected.json").read_text())
    got = gen.compute(fnd, qe)
    assert _compare(got, want) == []
    # the numbers are not degenerate: four distinct tokens, two distinct composed queries
    tokens = np.asarray(want["tokens"])
    assert tokens.shape == (4, 32) and np.linalg.matrix_rank(tokens) == 4
    composed = np.asarray(want["composed"])
    assert composed.shape == (2, 16) and abs(float(composed[0] @ composed[1])) < 0.999


def test_a_small_weight_change_is_caught(models):
    """The comparison is tight enough to see noise of 1e-2 of a weight's spread in one layer."""
    gen, fnd, qe = models
    want = json.loads((FIXTURE / "expected.json").read_text())
    layer = [m for m in qe.token_learner.modules() if isinstance(m, torch.nn.Linear)][-1]
    saved = layer.weight.detach().clone()
    noise = torch.randn(saved.shape, generator=torch.Generator().manual_seed(0)) * saved.std() * 1e-2
    try:
        with torch.no_grad():
            layer.weight.add_(noise)
        moved = _compare(gen.compute(fnd, qe), want)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert {"tokens", "composed", "query_encoder_fingerprint", "payload_fp16"} <= set(moved)


def test_payload_bytes_decode_to_the_tokens(models):
    from isacir.edge.payload import decode_payload

    _, _, qe = models
    want = json.loads((FIXTURE / "expected.json").read_text())
    payload = decode_payload(base64.b64decode(want["payload_fp16"]), expected_dim=32, expected_tokens=4)
    assert payload.fingerprint == want["query_encoder_fingerprint"] == qe.fingerprint
    np.testing.assert_allclose(payload.tokens, np.asarray(want["tokens"]), atol=2e-3)
