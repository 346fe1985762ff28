"""Feedback that can teach: corrected verdicts, the schema migration, and the triplet export."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import requests
from serve_helpers import build_service, start_server

from isacir.edge.payload import decode_payload, encode_payload
from isacir.feedback import SCHEMA_VERSION, FeedbackError, FeedbackStore, learnable

KEY = {"X-API-Key": "test-key"}

# The schema isacir 0.1.0 wrote (no user_version): verdicts confirmed | rejected only.
V1_SCHEMA = """
CREATE TABLE queries (query_id TEXT PRIMARY KEY, created REAL NOT NULL, mode TEXT NOT NULL, text TEXT NOT NULL,
    tokens BLOB, query_encoder_fingerprint TEXT, foundation_fingerprint TEXT, k INTEGER NOT NULL,
    results TEXT NOT NULL);
CREATE TABLE feedback (feedback_id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id), candidate_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected')), created REAL NOT NULL, note TEXT);
CREATE INDEX feedback_query ON feedback(query_id);
"""


def test_a_v1_log_is_migrated_in_place_and_keeps_every_row(tmp_path):
    path = tmp_path / "feedback.sqlite"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.execute("INSERT INTO queries VALUES ('q1', 1.0, 'tokens', 'is red', x'0102', 'fpq', 'fpf', 3, '[5, 6, 7]')")
    con.execute("INSERT INTO feedback (query_id, candidate_id, verdict, created) VALUES ('q1', 6, 'confirmed', 2.0)")
    con.commit()
    con.close()
    store = FeedbackStore(path)
    assert store.db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = store.rows()
    assert [(r["query_id"], r["candidate_id"], r["verdict"], r["in_results"]) for r in old] == [
        ("q1", 6, "confirmed", True)
    ]
    store.add("q1", 99, "corrected", in_gallery=lambda i: i == 99)  # not shown, but in the gallery
    assert store.rows()[-1]["in_results"] is False
    q = next(store.queries())
    assert q["latency_ms"] is None and q["results"] == [5, 6, 7] and len(q["verdicts"]) == 2
    # opening again is a no-op; a newer schema than this code reads is refused
    FeedbackStore(path)
    store.db().execute("PRAGMA user_version = 99")
    with pytest.raises(FeedbackError, match="newer"):
        FeedbackStore(path)


def test_a_v2_log_gains_the_adapter_column(tmp_path):
    """Version 2 (0.2.x after corrections landed): every row kept; queries served before have no adapter."""
    path = tmp_path / "feedback.sqlite"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA.replace("results TEXT NOT NULL);", "results TEXT NOT NULL, latency_ms REAL);"))
    con.execute("ALTER TABLE feedback ADD COLUMN in_results INTEGER NOT NULL DEFAULT 1")
    con.execute("PRAGMA user_version = 2")
    con.execute("INSERT INTO queries VALUES ('q1', 1.0, 'tokens', 'red', x'01', 'fpq', 'fpf', 3, '[5]', 4.0)")
    con.commit()
    con.close()
    store = FeedbackStore(path)
    assert store.db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    q = next(store.queries())
    assert q["adapter_fingerprint"] is None and q["version"] == "fpq" and q["latency_ms"] == 4.0
    assert q["model_version"] is None and q["interleave"] is None
    qid = store.log_query("tokens", "blue", b"\x02", 3, [5], "fpq", "fpf", adapter_fingerprint="fpa")
    assert [q["version"] for q in store.queries() if q["query_id"] == qid] == ["fpq+fpa"]
    # what the feedback counter is labelled with: the version that answered the judged query
    assert store.answered_by(qid) == "fpq+fpa" and store.answered_by("q1") == "fpq"
    assert store.answered_by("never-logged") is None


def test_a_v4_log_gains_the_review_queue(tmp_path):
    """Version 4 (no review queue): rows and verdicts kept; queries can then be drawn for review."""
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    qid = store.log_query("tokens", "red", b"\x01", 3, [5, 6], "fpq", "fpf")
    store.add(qid, 5, "confirmed")
    store.close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE review")
    con.execute("ALTER TABLE feedback DROP COLUMN verdict_s")
    con.execute("PRAGMA user_version = 4")
    con.commit()
    con.close()
    store = FeedbackStore(path)
    assert store.db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert store.counts() == {"queries": 1, "confirmed": 1}
    other = store.log_query("tokens", "blue", b"\x02", 3, [5, 6], "fpq", "fpf")
    store.enqueue_review(other, 0.9, 0.5, uniform=False)
    assert store.lease_review("ann", 60)["query_id"] == other
    store.add(other, 6, "confirmed", verdict_s=4.5)
    times = {q["query_id"]: [v["verdict_s"] for v in q["verdicts"]] for q in store.queries()}
    assert times == {qid: [None], other: [4.5]}


def test_a_v3_log_gains_the_version_name_and_interleaving_columns(tmp_path):
    """Version 3 (one served version at a time): rows kept; new rows record the registry version and teams."""
    path = tmp_path / "feedback.sqlite"
    FeedbackStore(path).close()
    con = sqlite3.connect(path)
    # a v3 file: the same tables without the two newest columns
    con.execute("ALTER TABLE queries DROP COLUMN interleave")
    con.execute("ALTER TABLE queries DROP COLUMN model_version")
    con.execute("ALTER TABLE feedback DROP COLUMN verdict_s")
    con.execute("DROP TABLE review")
    con.execute("PRAGMA user_version = 3")
    con.execute("INSERT INTO queries VALUES ('q1', 1.0, 'tokens', 'red', x'01', 'fpq', 'fpf', 3, '[5]', 4.0, 'fpa')")
    con.commit()
    con.close()
    store = FeedbackStore(path)
    assert store.db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = next(store.queries())
    assert old["version"] == "fpq+fpa" and old["model_version"] is None and old["interleave"] is None
    teams = {"A": "v1", "B": "v2", "teams": {"5": "A", "6": "B"}}
    qid = store.log_query("image", "x", None, 2, [5, 6], "fpq", "fpf", model_version="v1", interleave=teams)
    new = next(q for q in store.queries() if q["query_id"] == qid)
    assert new["model_version"] == "v1" and new["interleave"] == teams


def test_verdict_rules(make_store):
    store = make_store()
    qid = store.log_query("tokens", "is red", b"\x00", 3, [1, 2, 3], "fpq", "fpf", latency_ms=12.5)
    with pytest.raises(FeedbackError, match="not among the results"):
        store.add(qid, 4, "confirmed")
    with pytest.raises(FeedbackError, match="not an item of the gallery"):
        store.add(qid, 4, "corrected", in_gallery=lambda i: False)
    with pytest.raises(FeedbackError, match="verdict must be one of"):
        store.add(qid, 1, "maybe")
    with pytest.raises(FeedbackError, match="unknown query_id") as info:
        store.add("nope", 1, "confirmed")
    assert info.value.status == 404
    assert next(store.queries())["latency_ms"] == 12.5


def test_learnable_takes_the_latest_positive_and_every_other_rejection():
    q = {
        "query_id": "q",
        "created": 1.0,
        "mode": "tokens",
        "text": "t",
        "tokens": b"ab",
        "results": [1, 2, 3],
        "query_encoder_fingerprint": "a",
        "foundation_fingerprint": "b",
        "verdicts": [
            {"candidate_id": 1, "verdict": "rejected", "in_results": True},
            {"candidate_id": 2, "verdict": "confirmed", "in_results": True},
            {"candidate_id": 3, "verdict": "rejected", "in_results": True},
            {"candidate_id": 9, "verdict": "corrected", "in_results": False},
            {"candidate_id": 2, "verdict": "rejected", "in_results": True},
        ],
    }
    t = learnable(q)
    assert (t["positive_id"], t["positive_verdict"], t["positive_in_results"]) == (9, "corrected", False)
    assert t["rejected_ids"] == [1, 2, 3] and base64.b64decode(t["payload"]) == b"ab"
    assert learnable({**q, "verdicts": [v for v in q["verdicts"] if v["verdict"] == "rejected"]}) is None


@pytest.fixture(scope="module")
def live(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("feedback")
    app, state, images = build_service(tmp, openclip_fnd)
    server = start_server(app)
    yield server, state, images, tmp
    server.stop()


def _search(server, state, image, text="is red", k=3):
    from PIL import Image

    tokens = state.retriever.pseudo_tokens(Image.open(image))[0].numpy()
    payload = base64.b64encode(encode_payload(tokens, state.qe_fingerprint)).decode()
    r = requests.post(
        f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload, "text": text, "k": k}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json(), tokens


def test_corrected_round_trips_through_the_api_and_the_export(live):
    server, state, images, tmp = live
    res, tokens = _search(server, state, images[2], "make it blue")
    shown = [h["id"] for h in res["results"]]
    other = next(i["id"] for i in state.gallery.items() if i["id"] not in shown)

    def post(body):
        return requests.post(f"{server.url}/v1/feedback", headers=KEY, json=body, timeout=10)

    for cand in shown:
        assert post({"query_id": res["query_id"], "candidate_id": cand, "verdict": "rejected"}).status_code == 200
    # the operator opens the right item by id: it was not shown
    r = requests.get(f"{server.url}/v1/gallery/{other}", headers=KEY, timeout=10)
    assert r.status_code == 200 and r.json()["thumbnail_url"] == f"/v1/images/{other}/thumbnail"
    r = post({"query_id": res["query_id"], "verdict": "corrected", "correct_id": other})
    assert r.status_code == 200 and r.json()["correct_id"] == other, r.text
    # bad corrections are specific 4xx answers
    for body, status, needle in (
        ({"query_id": res["query_id"], "verdict": "corrected"}, 422, "needs correct_id"),
        ({"query_id": res["query_id"], "verdict": "corrected", "correct_id": 123456789}, 422, "not an item"),
        (
            {"query_id": res["query_id"], "verdict": "corrected", "correct_id": other, "candidate_id": shown[0]},
            422,
            "correct_id alone",
        ),
        ({"query_id": res["query_id"], "verdict": "confirmed"}, 422, "needs candidate_id"),
        ({"query_id": res["query_id"], "verdict": "confirmed", "candidate_id": other}, 422, "not among the results"),
        ({"query_id": "feedbeef", "verdict": "corrected", "correct_id": other}, 404, "unknown query_id"),
    ):
        r = post(body)
        assert r.status_code == status and needle in r.json()["detail"], (body, r.text)
    assert requests.get(f"{server.url}/v1/gallery/987654321", headers=KEY, timeout=10).status_code == 404

    out = tmp / "triplets.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "isacir.cli", "feedback", "export", "--db", str(state.feedback.path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    mine = next(t for t in lines if t["query_id"] == res["query_id"])
    assert mine["positive_id"] == other and not mine["positive_in_results"] and mine["rejected_ids"] == sorted(shown)
    assert mine["text"] == "make it blue" and mine["query_encoder_fingerprint"] == state.qe_fingerprint
    decoded = decode_payload(base64.b64decode(mine["payload"]))
    np.testing.assert_allclose(decoded.tokens, tokens, atol=2e-3)
    assert json.loads(proc.stdout.splitlines()[-1])["learnable"] == len(lines)
    # the query log carries the latency the response reported
    row = next(q for q in state.feedback.queries() if q["query_id"] == res["query_id"])
    assert row["latency_ms"] == res["took_ms"]


def test_export_of_a_missing_db_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "feedback",
            "export",
            "--db",
            str(tmp_path / "no.sqlite"),
            "--out",
            str(tmp_path / "t.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "feedback database not found" in proc.stderr and "Traceback" not in proc.stderr


def test_retention_drops_only_old_unjudged_tokens_and_keeps_the_counts(make_store):
    from isacir.pilot import summarize

    store = make_store()
    import time

    now = time.time()
    day = 86400.0
    old_judged = store.log_query("tokens", "a", b"\x01", 2, [1, 2], "fq", "ff", created=now - 40 * day)
    store.add(old_judged, 1, "confirmed")
    old_unjudged = store.log_query("tokens", "b", b"\x02", 2, [1, 2], "fq", "ff", created=now - 40 * day)
    recent = store.log_query("tokens", "c", b"\x03", 2, [1, 2], "fq", "ff", created=now - 5 * day)
    before = summarize(store.queries())
    assert store.prune(30, now=now, dry_run=True) == 1
    assert store.prune(30, now=now) == 1
    tokens = {q["query_id"]: q["tokens"] for q in store.queries()}
    assert tokens == {old_judged: b"\x01", old_unjudged: None, recent: b"\x03"}
    assert summarize(store.queries()) == before  # the pilot's numbers do not change
    assert store.prune(30, now=now) == 0
    with pytest.raises(FeedbackError, match="negative"):
        store.prune(-1)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "feedback",
            "prune",
            "--db",
            make_store.spec,
            "--older-than-days",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["pruned"] == 1  # the recent one
