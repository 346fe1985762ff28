"""BLIP ITM re-ranking: its order is the matching head's own, and the hidden-state cache serves
repeat candidates without decoding or encoding their images again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serve_helpers import make_images

from isacir.gallery import Gallery
from isacir.itm_cache import HiddenStateCache
from isacir.search import Retriever, read_gallery_image


@pytest.fixture
def itm(tmp_path, blip_fnd):
    from isacir.query import QueryEncoder

    make_images(tmp_path / "imgs", 14, seed=2)
    g = Gallery.open_or_create(tmp_path / "g", blip_fnd)
    g.index([str(tmp_path / "imgs")], blip_fnd, progress=False)
    qe = QueryEncoder.create(blip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
    return g, qe, Retriever(g, blip_fnd, qe), tmp_path / "imgs" / "img004.png"


@torch.no_grad()
def test_itm_order_is_the_matching_heads_own_and_the_cache_serves_repeats(itm, blip_fnd, monkeypatch):
    g, qe, r, ref = itm
    assert r.reranker(has_tokens=True) == "itm"
    plain = r.search(image=ref, text="is red", k=8)
    reranked = r.search(image=ref, text="is red", k=8, rerank=8)
    assert {h.id for h in reranked} == {h.id for h in plain}
    # the oracle: the foundation's match_score on freshly encoded candidates, sorted
    tokens = qe.encode_images([ref], foundation=blip_fnd)
    images = [read_gallery_image(h.path) for h in plain]
    hidden = blip_fnd.encode_image_features(blip_fnd.preprocess_batch(images)).hidden

    def match(states: torch.Tensor) -> np.ndarray:
        return (
            blip_fnd.match_score(
                states,
                pseudo_tokens=tokens.expand(len(plain), -1, -1),
                modifiers=[["is red"]] * len(plain),
                template=r.template,
            )
            .float()
            .numpy()
        )

    scores = match(hidden)
    oracle = [plain[i].id for i in np.argsort(-scores, kind="stable")]
    # the cache keeps states in fp16: repeats are ordered by the head's scores on the rounded states,
    # which may break a near tie of the fresh ones the other way
    cached_scores = match(hidden.half().float())
    cached_oracle = [plain[i].id for i in np.argsort(-cached_scores, kind="stable")]
    assert [h.id for h in reranked] == oracle
    assert [h.score for h in reranked] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=2e-3)  # fp16 states
    assert r.itm_cache is not None and r.itm_cache.misses == 8 and len(list(r.itm_cache.folder.glob("*.npy"))) == 8

    calls = []
    real = blip_fnd.encode_image_features
    monkeypatch.setattr(blip_fnd, "encode_image_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = r.search(image=ref, text="is red", k=8, rerank=8)
    assert [h.id for h in again] == cached_oracle and not calls and r.itm_cache.hits == 8
    assert [h.score for h in again] == pytest.approx(sorted(cached_scores.tolist(), reverse=True), abs=1e-4)
    # a new retriever (a restarted service) finds the cache on disk
    fresh = Retriever(g, blip_fnd, qe)
    assert [h.id for h in fresh.search(image=ref, text="is red", k=8, rerank=8)] == cached_oracle and not calls


def test_cache_entries_follow_content_and_stay_within_the_bound(tmp_path):
    cache = HiddenStateCache(tmp_path, "fp", max_bytes=10_000)
    state = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)  # 640 bytes in fp16
    cache.put(1, "aaaa", state)
    assert np.allclose(cache.get(1, "aaaa"), state, atol=1e-2) and cache.get(1, "bbbb") is None  # re-embedded
    for i in range(2, 40):
        cache.put(i, "h", state)
    files = list(cache.folder.glob("*.npy"))
    assert sum(p.stat().st_size for p in files) <= 10_000 and cache.size_bytes() <= 10_000
    assert cache.get(39, "h") is not None  # the newest stay
    (cache.folder / "39-h.npy").write_bytes(b"torn")  # a damaged entry is a miss, not an error
    assert cache.get(39, "h") is None
    assert HiddenStateCache(tmp_path, "other-fp").get(2, "h") is None  # another foundation never matches
