"""The review queue: what it asks about, that it never hands one query to two operators, and that
its weighting keeps the pilot an estimate of the whole traffic."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from isacir.errors import ConfigError
from isacir.feedback.review import ReviewPolicy, ReviewSampler, informativeness
from isacir.intervals import weighted_rate


def test_informativeness_is_the_larger_of_a_close_race_and_unseen_words():
    clear, why = informativeness([0.9, 0.7], "red and round", {"red", "and", "round"})
    assert clear == 0.0 and why["unseen_words"] == [] and why["margin"] == pytest.approx(0.2)
    tie, _ = informativeness([0.80, 0.80], "red", {"red"})
    assert tie == 1.0
    half, _ = informativeness([0.800, 0.775], "red", {"red"}, margin_scale=0.05)
    assert half == pytest.approx(0.5)
    novel, why = informativeness([0.9, 0.5], "Red STRIPED and shiny", {"red", "and"})
    assert novel == pytest.approx(0.5) and why["unseen_words"] == ["shiny", "striped"]
    # no vocabulary yet: novelty says nothing; one result: nothing to race against
    assert informativeness([0.9, 0.5], "anything", None)[0] == 0.0
    assert informativeness([0.9], "anything", set())[0] == 0.0
    assert informativeness([], "x", set())[0] == 1.0
    # Japanese words are words too
    assert informativeness([0.9, 0.5], "取っ手なし", {"red"})[1]["unseen_words"] == ["取っ手なし"]


def test_the_policy_is_checked():
    for bad in (ReviewPolicy(budget=1.5), ReviewPolicy(uniform=0.0), ReviewPolicy(lease_s=0)):
        with pytest.raises(ConfigError):
            bad.check()


def test_the_sampler_keeps_its_budget_and_its_uniform_slice():
    rng = np.random.default_rng(0)
    scores = rng.beta(0.6, 1.5, 40_000)  # most queries clear, a few hard ones
    policy = ReviewPolicy(budget=0.1, uniform=0.2)
    sampler = ReviewSampler(policy, seed=1, mean_score=float(scores[:200].mean()))
    drawn = [(s, sampler.draw(float(s))) for s in scores]
    picked = [(s, d) for s, d in drawn if d is not None]
    rate = len(picked) / len(scores)
    assert 0.09 < rate < 0.115  # about the budget (both parts may draw the same query)
    by_uniform = sum(d.uniform for _, d in picked) / len(scores)
    assert by_uniform == pytest.approx(0.02, abs=0.003)  # budget x uniform share
    # the queue prefers hard queries
    assert np.mean([s for s, _ in picked]) > 1.5 * scores.mean()
    # every probability recorded is the one drawn with: p = 1 - (1 - pu)(1 - ps)
    s, d = picked[0]
    assert 0 < d.probability <= 1 and d.score == s


def test_weighted_rate_on_a_hand_computed_log():
    # weights 2, 4, 1: rate (2 + 0 + 1) / 7; variance sum((1 - p) / p^2 (y - R)^2) / 7^2
    out = weighted_rate([(True, 0.5), (False, 0.25), (True, 1.0)])
    r = 3 / 7
    var = (0.5 / 0.25 * (1 - r) ** 2 + 0.75 / 0.0625 * r**2 + 0.0) / 49
    assert out["rate"] == pytest.approx(r) and out["weight_sum"] == pytest.approx(7)
    half = 1.959963984540054 * math.sqrt(var)
    assert out["ci"] == pytest.approx([max(0.0, r - half), r + half])
    assert weighted_rate([])["rate"] is None
    # everything reviewed (p = 1): the plain rate, with no sampling error
    assert weighted_rate([(True, 1.0), (False, 1.0)]) == {"n": 2, "rate": 0.5, "ci": [0.5, 0.5], "weight_sum": 2.0}
    with pytest.raises(ValueError):
        weighted_rate([(True, 0.0)])


def test_weighting_recovers_the_traffics_false_hit_rate_that_the_queue_alone_overstates():
    """Hard queries fail more often and are drawn more often: the reviewed queries' plain rate is
    far above the traffic's, the weighted one lands on it (over many pilots, within its interval)."""
    rng = np.random.default_rng(7)
    n = 20_000
    scores = rng.beta(0.6, 1.5, n)
    false_hit = rng.random(n) < 0.05 + 0.5 * scores  # harder queries fail more
    truth = false_hit.mean()
    covered, plain, weighted = 0, [], []
    for seed in range(40):
        sampler = ReviewSampler(ReviewPolicy(budget=0.1), seed=seed, mean_score=0.3)
        rows = [(bool(y), d.probability) for s, y in zip(scores, false_hit, strict=True) if (d := sampler.draw(s))]
        est = weighted_rate(rows)
        covered += est["ci"][0] <= truth <= est["ci"][1]
        plain.append(np.mean([y for y, _ in rows]))
        weighted.append(est["rate"])
    assert np.mean(plain) > truth + 0.05  # the queue alone overstates it
    assert abs(np.mean(weighted) - truth) < 0.005
    assert covered >= 34  # about 95 % of 40 intervals cover the truth


def _log(store, n):
    return [store.log_query("tokens", f"red {i}", b"\x01", 3, [1, 2, 3], "fpq", "fpf") for i in range(n)]


def test_the_queue_hands_each_query_to_one_operator_at_a_time(make_store):
    store = make_store()
    qids = _log(store, 6)
    for i, q in enumerate(qids):
        store.enqueue_review(q, 0.5, 0.2, uniform=i % 2 == 0, reasons={"margin": 0.01})
    store.enqueue_review(qids[0], 0.9, 0.9, uniform=False)  # once only
    got: dict[str, str] = {}
    lock = threading.Lock()

    def operator(name):
        other = make_store()  # a connection of its own, as another replica or worker would have
        lease = other.lease_review(name, 60)
        with lock:
            got[name] = lease["query_id"] if lease else None

    threads = [threading.Thread(target=operator, args=(f"op{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [q for q in got.values() if q is not None]
    assert sorted(handed) == sorted(qids) and len(set(handed)) == 6  # six queries, six operators, no twice
    assert sum(q is None for q in got.values()) == 2
    holder = next(n for n, q in got.items() if q == qids[0])
    again = store.lease_review(holder, 60)
    assert again["query_id"] == qids[0] and again["reasons"] == {"margin": 0.01} and again["results"] == [1, 2, 3]
    assert store.review_items()[0]["probability"] == 0.2  # the first enqueue stands
    # a verdict closes it; a skipped one goes back; an expired lease goes to the next operator
    store.add(qids[0], 1, "confirmed")
    assert store.lease_review(holder, 60) is None or store.lease_review(holder, 60)["query_id"] != qids[0]
    h1 = next(n for n, q in got.items() if q == qids[1])
    assert store.release_review(qids[1], h1) and not store.release_review(qids[1], "nobody")
    assert store.lease_review("late", 60)["query_id"] == qids[1]
    # two minutes on, every lease has run out: the oldest open query goes to whoever asks
    import time

    assert store.lease_review("later", 60, now=time.time() + 120)["query_id"] == qids[1]
    done = {r["query_id"]: r["done"] for r in store.review_items()}
    assert done[qids[0]] is not None and done[qids[1]] is None


def test_the_service_queues_answered_queries_and_hands_them_out_per_key(tmp_path, openclip_fnd):
    import base64

    from fastapi.testclient import TestClient
    from serve_helpers import build_service

    from isacir.edge.payload import encode_payload
    from isacir.serve.review import ReviewDesk

    app, state, _ = build_service(tmp_path, openclip_fnd, api_key=None, n_images=10)
    state.review = ReviewDesk(state.feedback, ReviewPolicy(budget=1.0, uniform=1.0, lease_s=300), seed=0)
    state.keys = type(state.keys).from_secrets(["ann-secret", "bob-secret"])  # two operators
    ann, bob = {"X-API-Key": "ann-secret"}, {"X-API-Key": "bob-secret"}
    qe = state.query_encoder
    rng = np.random.default_rng(0)
    with TestClient(app) as client:
        asked = []
        for text in ("red", "blue and round", "tiny"):
            tokens = rng.standard_normal((qe.num_tokens, qe.word_dim)).astype(np.float32)
            payload = base64.b64encode(encode_payload(tokens, state.qe_fingerprint)).decode()
            r = client.post("/v1/search/tokens", headers=ann, json={"payload": payload, "text": text, "k": 4})
            assert r.status_code == 200
            asked.append((r.json()["query_id"], [h["id"] for h in r.json()["results"]]))
        items = {i["query_id"]: i for i in state.feedback.review_items()}
        assert set(items) == {q for q, _ in asked} and all(i["probability"] == 1.0 for i in items.values())
        first = client.get("/v1/review/next", headers=ann).json()["review"]
        assert first["query_id"] == asked[0][0] and [h["id"] for h in first["results"]] == asked[0][1]
        assert first["text"] == "red" and first["results"][0]["thumbnail_url"].endswith("/thumbnail")
        assert client.get("/v1/review/next", headers=ann).json()["review"]["query_id"] == asked[0][0]
        second = client.get("/v1/review/next", headers=bob).json()["review"]
        assert second["query_id"] == asked[1][0]  # never the one ann holds
        verdict = {"query_id": first["query_id"], "verdict": "confirmed", "candidate_id": first["results"][0]["id"]}
        assert client.post("/v1/feedback", headers=ann, json=verdict).status_code == 200
        assert client.get("/v1/review/next", headers=ann).json()["review"]["query_id"] == asked[2][0]
        released = client.post(f"/v1/review/{asked[1][0]}/release", headers=bob).json()
        assert released == {"query_id": asked[1][0], "released": True}
        assert client.post(f"/v1/review/{asked[2][0]}/release", headers=bob).json()["released"] is False
        assert client.get("/v1/review/next", headers=bob).json()["review"]["query_id"] == asked[1][0]
        # skipping gives it back and hands the next open one (none here but ann's): then nothing
        assert client.get(f"/v1/review/next?skip={asked[1][0]}", headers=bob).json()["review"] is None
        assert client.get("/v1/review/next", headers=bob).json()["review"]["query_id"] == asked[1][0]
        assert client.get("/v1/review/next").status_code == 401
        review = client.get("/v1/pilot/summary?group_by=overall", headers=ann).json()["review"]
        assert (review["drawn"], review["judged"]) == (3, 1)
        assert review["false_hit_rate"]["weighted"]["rate"] == 0.0
