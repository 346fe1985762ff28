"""Refinement inside a search: the moved query's order against a brute-force oracle on the stored
vectors, the weights fitted on verdicts, and the route with its log entry."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import build_service

from isacir.edge.payload import encode_payload
from isacir.refine import RefineError, RefineWeights, check_marks, fit_weights, refined_query


@pytest.fixture
def service(tmp_path, openclip_fnd):
    app, state, _ = build_service(tmp_path, openclip_fnd, api_key=None, n_images=16)
    return app, state


def _payload(state, seed: int) -> str:
    qe = state.query_encoder
    tokens = np.random.default_rng(seed).standard_normal((qe.num_tokens, qe.word_dim)).astype(np.float32)
    raw = encode_payload(tokens * state.foundation.word_embedding_rms(), state.qe_fingerprint)
    return base64.b64encode(raw).decode()


def test_refined_query_is_the_weighted_move_renormalised():
    q = np.array([1.0, 0.0, 0.0], np.float32)
    toward = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    away = np.array([[1.0, 0.0, 0.0]], np.float32)
    got = refined_query(q, toward, away, RefineWeights(1.0, 1.0, 0.5))
    want = np.array([0.5, 0.5, 0.5]) / np.linalg.norm([0.5, 0.5, 0.5])
    assert np.allclose(got, want) and got.dtype == np.float32
    assert np.allclose(refined_query(q, toward[:0], away[:0]), q)  # no marks of a kind: no move that way
    with pytest.raises(RefineError, match="cancel"):
        refined_query(q, toward[:0], away, RefineWeights(1.0, 0.0, 1.0))
    with pytest.raises(RefineError, match="must be one of right, close, wrong"):
        check_marks({1: "maybe"})


def test_the_route_ranks_as_a_brute_force_search_of_the_moved_query(service):
    app, state = service
    ids, vecs = state.gallery.vectors(sorted(state.gallery.ids().tolist()))
    with TestClient(app) as client:
        first = client.post("/v1/search/tokens", json={"payload": _payload(state, 1), "text": "red", "k": 6}).json()
        shown = [r["id"] for r in first["results"]]
        marks = [
            {"id": shown[2], "mark": "close"},
            {"id": shown[0], "mark": "wrong"},
            {"id": shown[1], "mark": "wrong"},
        ]
        r = client.post(f"/v1/search/{first['query_id']}/refine", json={"marks": marks, "k": 6})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["mode"] == "refine" and out["refined_from"] == first["query_id"] and out["text"] == "red"
        # the oracle: the logged query composed again, moved by hand, every stored vector scored
        retriever = state.lineup.primary.model.retriever
        import torch

        from isacir.edge.payload import decode_payload

        tokens = torch.from_numpy(decode_payload(base64.b64decode(_payload(state, 1))).tokens)[None]
        query = retriever.compose(retriever.prepare_tokens(tokens), ["red"])[0]
        row = {int(i): v for i, v in zip(ids.tolist(), vecs, strict=True)}
        w = state.refine_weights
        moved = w.keep * query + w.toward * row[shown[2]] - w.away * (row[shown[0]] + row[shown[1]]) / 2
        moved /= np.linalg.norm(moved)
        scores = {i: float(v @ moved) for i, v in row.items() if i not in (shown[0], shown[1])}
        want = sorted(scores, key=lambda i: -scores[i])[:6]
        assert [h["id"] for h in out["results"]] == want
        assert [h["score"] for h in out["results"]] == pytest.approx([scores[i] for i in want], abs=1e-5)
        # logged like any search: a verdict on the refined list is accepted and read by learning
        verdict = {"query_id": out["query_id"], "verdict": "confirmed", "candidate_id": want[0]}
        assert client.post("/v1/feedback", json=verdict).status_code == 200
        assert state.feedback.logged_query(out["query_id"])["mode"] == "refine"
        # what cannot be refined says why
        assert client.post("/v1/search/nope/refine", json={"marks": marks}).status_code == 404
        bad = client.post(f"/v1/search/{first['query_id']}/refine", json={"marks": [{"id": 12345, "mark": "close"}]})
        assert bad.status_code == 422 and "not in the gallery" in bad.json()["detail"]
        assert client.post(f"/v1/search/{first['query_id']}/refine", json={"marks": []}).status_code == 422


class _ArrayGallery:
    """Stored vectors searched exactly in numpy: the fit reads nothing else of a gallery."""

    def __init__(self, vectors: np.ndarray):
        self.vecs = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.ids = np.arange(100, 100 + len(vectors))

    def vectors(self, ids):
        rows = [int(i) - 100 for i in ids]
        return np.asarray(ids, dtype=np.int64), self.vecs[rows]

    def search(self, queries, k):
        from types import SimpleNamespace

        hits = []
        for row in queries @ self.vecs.T:
            hits.append([SimpleNamespace(id=int(self.ids[j]), score=float(row[j])) for j in np.argsort(-row)[:k]])
        return hits


def test_fitted_weights_are_the_grids_best_and_never_worse_than_no_move(tmp_path):
    """Targets sit beside the item an operator would call close, queries point elsewhere: the fit
    moves toward the close item, and one round finds every target where not moving finds none."""
    rng = np.random.default_rng(3)
    n_pairs, dim = 10, 16
    anchors = rng.standard_normal((n_pairs, dim))
    close = anchors + 0.05 * rng.standard_normal((n_pairs, dim))  # each target's twin
    gallery = _ArrayGallery(np.concatenate([anchors, close]))
    rounds = []
    for t in range(n_pairs):
        away = -gallery.vecs[t] + 0.1 * rng.standard_normal(dim)  # a query pointing away from the target
        rounds.append(
            {"query": away / np.linalg.norm(away), "marks": {100 + n_pairs + t: "close"}, "positive": 100 + t}
        )
    weights, report = fit_weights(gallery, rounds, k=2)
    grid = report["grid"]
    still = next(g for g in grid if g["toward"] == 0 and g["away"] == 0)
    assert still["hit_at_k"] == 0.0 and report["chosen"]["hit_at_k"] == max(g["hit_at_k"] for g in grid) == 1.0
    assert (weights.toward, weights.away) == (report["chosen"]["toward"], report["chosen"]["away"])
    assert weights.toward > 0 and "fitted on 10" in weights.source
    # ties go to the smallest move that reaches the best
    best = [g for g in grid if g["hit_at_k"] == 1.0]
    assert weights.toward + weights.away == min(g["toward"] + g["away"] for g in best)
    weights.save(tmp_path)
    assert RefineWeights.load(tmp_path) == weights and RefineWeights.load(tmp_path / "none") == RefineWeights()
    (tmp_path / "refine.json").write_text("{}")
    with pytest.raises(RefineError, match="not refinement weights"):
        RefineWeights.load(tmp_path)


def test_rounds_come_from_searches_whose_right_item_was_not_shown(service):
    from isacir.adapt.refine import fit_refinement, refinement_rounds

    app, state = service
    retriever = state.lineup.primary.model.retriever
    before = len(refinement_rounds(state.feedback, retriever))
    all_ids = [int(i) for i in state.gallery.ids().tolist()]
    with TestClient(app) as client:
        for seed in (11, 12):
            answer = client.post("/v1/search/tokens", json={"payload": _payload(state, seed), "text": "blue", "k": 4})
            shown = [r["id"] for r in answer.json()["results"]]
            qid = answer.json()["query_id"]
            client.post("/v1/feedback", json={"query_id": qid, "verdict": "rejected", "candidate_id": shown[0]})
            unseen = next(i for i in all_ids if i not in shown)
            client.post("/v1/feedback", json={"query_id": qid, "verdict": "corrected", "correct_id": unseen})
        # a confirmed search needs no refinement: not a round
        answer = client.post("/v1/search/tokens", json={"payload": _payload(state, 13), "text": "red", "k": 4}).json()
        client.post(
            "/v1/feedback",
            json={"query_id": answer["query_id"], "verdict": "confirmed", "candidate_id": answer["results"][1]["id"]},
        )
    rounds = refinement_rounds(state.feedback, retriever)
    assert before == 0 and len(rounds) == 2
    new = rounds[-1]
    assert list(new["marks"].values()).count("wrong") == 1 and list(new["marks"].values()).count("close") == 1
    weights, report = fit_refinement(state.feedback, retriever, k=3)
    assert report["n"] == len(rounds) and 0.0 <= report["hit_at_k_before"] <= report["chosen"]["hit_at_k"]
