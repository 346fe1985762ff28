"""Pilot metrics: every definition on hand-made logs, numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from isacir.pilot import DEFINITIONS, Tagger, hit_curve, pilot_summary, summarize, wilson

DAY = 86400.0
T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC, a Monday


def q(results, verdicts=(), created=T0, mode="tokens", text="is red", fp="fpA", latency=None, qid=None):
    return {
        "query_id": qid or f"q{created}{results}",
        "created": created,
        "mode": mode,
        "text": text,
        "query_encoder_fingerprint": fp,
        "results": list(results),
        "latency_ms": latency,
        "verdicts": [{"candidate_id": c, "verdict": v} for c, v in verdicts],
    }


def six_queries():
    """The acceptance log: two confirmed at top-1, one rejected at top-1, one corrected to an item
    outside the list, two without a verdict."""
    return [
        q([1, 2, 3], [(1, "confirmed")], latency=10),
        q([4, 5, 6], [(4, "confirmed")], latency=20),
        q([7, 8, 9], [(7, "rejected")], latency=30),
        q([10, 11, 12], [(99, "corrected")], latency=40),
        q([13, 14, 15], latency=50),
        q([16, 17, 18], latency=60),
    ]


def test_the_acceptance_log_by_hand():
    s = summarize(six_queries())
    assert (s["queries"], s["judged"]) == (6, 4)
    assert s["precision_at_1"] == 0.5  # 2 of 4 judged
    assert s["hit_at_k"] == 0.5  # the corrected item was not returned
    assert s["false_hit_rate"] == 0.25  # 1 of 4
    assert s["correction_rate"] == 0.25  # 1 of 4
    assert s["unjudged_share"] == pytest.approx(1 / 3)
    assert s["mrr"] == 0.5  # (1 + 1 + 0 + 0) / 4
    # nearest rank over 10..60: p50 is the 3rd value, p95 the 6th
    assert (s["latency_p50_ms"], s["latency_p95_ms"]) == (30.0, 60.0)


def test_operator_time_per_judged_query_by_hand():
    """The time spent on a query is its last verdict's (results shown to that verdict); queries whose
    client did not time them do not count."""
    log = [
        q([1, 2, 3], [(2, "rejected"), (1, "confirmed")]),
        q([4, 5, 6], [(4, "confirmed")]),
        q([7, 8, 9], [(7, "rejected")]),
        q([10, 11, 12]),
    ]
    for query, times in zip(log, [(3.0, 7.5), (2.0,), (None,)], strict=False):
        for v, t in zip(query["verdicts"], times, strict=True):
            v["verdict_s"] = t
    s = summarize(log)
    assert s["operator_timed"] == 2 and s["operator_s_mean"] == pytest.approx((7.5 + 2.0) / 2)
    assert s["operator_s_median"] == 2.0  # nearest rank of two values: the first
    assert summarize(log[2:])["operator_s_median"] is None


def test_rates_under_selective_review_by_hand():
    """The review queue drew four of the six (probabilities 1/2, 1/4, 1 and 1/2; the last unjudged):
    false hits weigh 2, 4 and 1 for the three judged ones, of which only the 1/4 one (weight 4) is
    a false hit: 4 / 7, against 1 / 3 unweighted; the uniform slice holds only the first."""
    log = six_queries()
    ids = [x["query_id"] for x in log]
    review = [
        {"query_id": ids[0], "probability": 0.5, "uniform": True},
        {"query_id": ids[2], "probability": 0.25, "uniform": False},
        {"query_id": ids[3], "probability": 1.0, "uniform": False},
        {"query_id": ids[4], "probability": 0.5, "uniform": False},
    ]
    r = pilot_summary(log, "overall", review=review)["review"]
    assert (r["drawn"], r["judged"]) == (4, 3)
    fh = r["false_hit_rate"]
    assert fh["weighted"]["rate"] == pytest.approx(4 / 7) and fh["weighted"]["n"] == 3
    assert fh["unweighted"]["rate"] == pytest.approx(1 / 3)
    assert fh["unweighted"]["ci"] == pytest.approx(list(wilson(1, 3)))
    assert fh["uniform_slice"] == {"n": 1, "rate": 0.0, "ci": list(wilson(0, 1))}
    p1 = r["precision_at_1"]  # right at top-1: only the first (weight 2) of 2 + 4 + 1
    assert p1["weighted"]["rate"] == pytest.approx(2 / 7) and p1["unweighted"]["rate"] == pytest.approx(1 / 3)
    # no draws in the window: no review block; the plain summary is unchanged by it
    assert "review" not in pilot_summary(log, "overall", review=[{"query_id": "elsewhere", "probability": 1.0}])
    assert pilot_summary(log, "overall", review=review)["overall"] == summarize(log)


def test_mrr_hit_at_k_and_the_latest_positive():
    log = [
        q([5, 6, 7, 8], [(7, "confirmed")]),  # rank 3
        q([1, 2, 3, 4], [(1, "rejected"), (2, "confirmed"), (3, "confirmed")]),  # latest positive: rank 3
        q([9, 10, 11, 12], [(9, "rejected"), (10, "rejected")]),  # judged, no positive
    ]
    s = summarize(log)
    assert s["mrr"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert s["precision_at_1"] == 0 and s["false_hit_rate"] == pytest.approx(2 / 3)
    assert hit_curve(log, [1, 2, 3, 4]) == {1: 0.0, 2: 0.0, 3: pytest.approx(2 / 3), 4: pytest.approx(2 / 3)}
    # a correction to an item that was shown is not a correction from outside the list
    assert summarize([q([1, 2], [(2, "corrected")])])["correction_rate"] == 0.0


def test_wilson_interval_against_the_formula():
    lo, hi = wilson(2, 4)
    z = 1.959963984540054
    centre = (0.5 + z * z / 8) / (1 + z * z / 4)
    half = z * math.sqrt(0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert (lo, hi) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (round(lo, 4), round(hi, 4)) == (0.15, 0.85)  # the textbook value for 2 of 4
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(0, 0) is None
    s = summarize(six_queries())
    assert s["precision_at_1_ci"] == [pytest.approx(lo), pytest.approx(hi)]


def test_groups_by_day_week_version_mode_and_category():
    log = [
        q([1], [(1, "confirmed")], created=T0, fp="A", text="make it red"),
        q([2], [(2, "rejected")], created=T0 + DAY, fp="B", mode="image", text="bigger and red"),
        q([3], created=T0 + 7 * DAY, fp="A", text="the same"),
    ]
    by_day = pilot_summary(log, "day")
    assert [g["key"] for g in by_day["groups"]] == ["2025-12-01", "2025-12-02", "2025-12-08"]
    assert [g["key"] for g in pilot_summary(log, "week")["groups"]] == ["2025-W49", "2025-W50"]
    by_version = {g["key"]: g for g in pilot_summary(log, "version")["groups"]}
    assert by_version["A"]["queries"] == 2 and by_version["A"]["precision_at_1"] == 1.0
    assert by_version["B"]["false_hit_rate"] == 1.0
    assert {g["key"]: g["queries"] for g in pilot_summary(log, "mode")["groups"]} == {"image": 1, "tokens": 2}
    by_cat = {g["key"]: g["queries"] for g in pilot_summary(log, "category")["groups"]}
    assert by_cat == {"colour": 2, "size": 1, "other": 1}  # "bigger and red" counts in both of its categories
    summary = pilot_summary(log, "version")
    assert summary["overall"]["queries"] == 3 and set(summary["definitions"]) == set(DEFINITIONS)
    assert set(summary["groups"][0]) >= {
        "key",
        "queries",
        "judged",
        "precision_at_1",
        "precision_at_1_ci",
        "hit_at_k",
        "false_hit_rate",
        "correction_rate",
        "mrr",
        "unjudged_share",
        "latency_p50_ms",
        "latency_p95_ms",
    }
    with pytest.raises(ValueError, match="group_by must be one of"):
        pilot_summary(log, "colour")


def test_empty_log_reports_nothing_rather_than_zero():
    s = summarize([])
    assert s["queries"] == 0 and s["precision_at_1"] is None and s["precision_at_1_ci"] is None
    assert s["latency_p50_ms"] is None


def test_tagger_keywords_are_configurable(tmp_path):
    t = Tagger()
    assert t.tags("same dress but sleeveless, in red") == ["colour", "remove"]
    assert t.tags("Move it to the LEFT") == ["position"]
    assert t.tags("the same") == ["other"]
    path = tmp_path / "kw.json"
    path.write_text('{"material": ["chiffon"], "fit": ["slim", "loose"]}')
    custom = Tagger.from_file(path)
    assert custom.tags("a slim chiffon one") == ["material", "fit"]
    path.write_text('{"fit": "slim"}')
    from isacir.errors import IsacirError

    with pytest.raises(IsacirError, match="expected"):
        Tagger.from_file(path)


def test_the_summary_route_on_the_acceptance_log(tmp_path, openclip_fnd):
    """Six answered queries through a real service: the numbers of the issue, overall and per mode."""
    import requests
    from serve_helpers import build_service, start_server

    app, state, _ = build_service(tmp_path, openclip_fnd, n_images=8)
    ids = [item["id"] for item in state.gallery.items()]
    outside = ids[7]
    store = state.feedback
    logged = []
    for i, (verdict, item) in enumerate(
        [("confirmed", 0), ("confirmed", 0), ("rejected", 0), ("corrected", None), (None, None), (None, None)]
    ):
        results = ids[i % 4 : i % 4 + 3]
        qid = store.log_query(
            "image" if i < 3 else "tokens",
            "make it red",
            b"\x00",
            3,
            results,
            "fpA",
            "fpF",
            latency_ms=10.0 * (i + 1),
            created=T0 + i * 3600,
        )
        if verdict == "corrected":
            store.add(qid, outside, "corrected", in_gallery=lambda _: True)
        elif verdict:
            store.add(qid, results[item], verdict)
        logged.append(qid)
    server = start_server(app)
    try:

        def get(**params):
            return requests.get(
                f"{server.url}/v1/pilot/summary", headers={"X-API-Key": "test-key"}, params=params, timeout=30
            )

        body = get(group_by="mode").json()
        o = body["overall"]
        assert (o["queries"], o["judged"]) == (6, 4)
        assert (o["precision_at_1"], o["hit_at_k"], o["false_hit_rate"], o["correction_rate"]) == (0.5, 0.5, 0.25, 0.25)
        assert o["unjudged_share"] == pytest.approx(1 / 3) and o["latency_p50_ms"] == 30.0
        assert {g["key"]: g["judged"] for g in body["groups"]} == {"image": 3, "tokens": 1}
        assert body["definitions"]["false_hit_rate"].startswith("judged queries whose top-1 result was rejected")
        # a time window: the first three hours hold the three image queries
        window = get(group_by="overall", **{"from": "2025-12-01", "to": "2025-12-01T03:00:00Z"}).json()
        assert window["overall"]["queries"] == 3
        assert get(group_by="colour").status_code == 422
        assert get(**{"from": "yesterday"}).json()["code"] == "time_range"
        assert requests.get(f"{server.url}/v1/pilot/summary", timeout=30).status_code == 401
    finally:
        server.stop()


def two_version_log(store, ids, days=4, per_day=6):
    """A small pilot: version A is wrong first half the time, version B (from day 2 on) a sixth."""
    qids = []
    for d in range(days):
        for i in range(per_day):
            version = "A" * 16 if d < 2 else "B" * 16
            results = ids[i % 3 : i % 3 + 3]
            text = ("make it red", "move it left", "bigger", "without the stripes", "in leather", "the same")[i]
            qid = store.log_query(
                "tokens",
                text,
                b"\x00",
                3,
                results,
                version,
                "F",
                latency_ms=20.0 + i,
                created=T0 + d * DAY + i * 60,
                model_version="v2" if version.startswith("B") else None,  # B came through the registry
            )
            wrong = (i % 2 == 0) if version.startswith("A") else (i == 0)
            # operators take longer on version A's lists (12 s against 6 s)
            store.add(qid, results[0], "rejected" if wrong else "confirmed", verdict_s=12.0 if d < 2 else 6.0)
            qids.append(qid)
    return qids


def test_charts_are_svg_with_every_version_named(tmp_path):
    from isacir.feedback import FeedbackStore
    from isacir.pilot import charts, pilot_summary
    from isacir.pilot.metrics import short_version

    store = FeedbackStore(tmp_path / "f.sqlite")
    two_version_log(store, list(range(1, 10)))
    log = list(store.queries())
    assert short_version("a" * 16 + "+" + "b" * 16) == "aaaaaaaa+bbbbbbbb"
    versions = charts.by_version(log)
    # by registry name with the fingerprint beside it, in the order they served; A had no name
    assert 0 <= versions.index("AAAAAAAA") < versions.index("v2 (BBBBBBBB)")
    labels = {g["key"]: g["label"] for g in pilot_summary(log, "version")["groups"]}
    assert labels == {"A" * 16: "AAAAAAAA", "B" * 16: "v2 (BBBBBBBB)"}
    assert all("label" not in g for g in pilot_summary(log, "day")["groups"])
    for svg in (
        charts.over_time(log, "false_hit_rate", "day"),
        charts.hit_at_k(log),
        charts.by_category(log),
        charts.by_version(log),
    ):
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    over = charts.over_time(log, "false_hit_rate", "day")
    assert "AAAAAAAA" in over and "BBBBBBBB" in over and "2025-12-04" in over
    assert "colour" in charts.by_category(log) and "remove" in charts.by_category(log)
    by_version = {g["key"]: g for g in pilot_summary(log, "version")["groups"]}
    assert by_version["A" * 16]["false_hit_rate"] == 0.5 and by_version["B" * 16]["false_hit_rate"] == pytest.approx(
        1 / 6
    )


def test_report_is_one_self_contained_file_plus_csvs(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    from isacir.feedback import FeedbackStore

    store = FeedbackStore(tmp_path / "f.sqlite")
    two_version_log(store, list(range(1, 10)))
    out, csv_dir = tmp_path / "report.html", tmp_path / "csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "pilot",
            "report",
            "--feedback-db",
            str(tmp_path / "f.sqlite"),
            "--out",
            str(out),
            "--csv",
            str(csv_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.count("<svg") == 5 and "<?xml" not in page  # charts inline, as elements
    # fetches nothing: no external source, stylesheet, script or link (namespace URIs are names, not fetches)
    for needle in ("src=", "<link", "<script", "url(http", 'href="http'):
        assert needle not in page, needle
    assert "AAAAAAAA" in page and "false-hit rate" in page and "24 answered searches" in page
    rows = list(csv.DictReader((csv_dir / "pilot-by-version.csv").open()))
    assert [r["key"] for r in rows] == ["A" * 16, "B" * 16]
    assert float(rows[0]["false_hit_rate"]) == 0.5 and float(rows[1]["false_hit_rate"]) == pytest.approx(
        1 / 6, abs=1e-4
    )
    # the cost side: operator seconds per judged query, per version
    assert [float(r["operator_s_median"]) for r in rows] == [12.0, 6.0] and rows[0]["operator_timed"] == "12"
    assert "operator time per judged query<b>6.0 s</b>" in page
    assert {p.name for p in csv_dir.iterdir()} == {
        f"pilot-by-{g}.csv" for g in ("overall", "day", "week", "version", "mode", "category")
    }
    # a window holding only version A's two days
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "pilot",
            "report",
            "--feedback-db",
            str(tmp_path / "f.sqlite"),
            "--out",
            str(tmp_path / "a.html"),
            "--from",
            "2025-12-01",
            "--to",
            "2025-12-03",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "12 answered searches" in (tmp_path / "a.html").read_text()
    assert json.loads(proc.stdout.splitlines()[-1])["written"] == [str(tmp_path / "a.html")]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "pilot",
            "report",
            "--feedback-db",
            str(tmp_path / "f.sqlite"),
            "--out",
            str(tmp_path / "b.html"),
            "--from",
            "soon",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "--from/--to" in bad.stderr and "Traceback" not in bad.stderr


def test_the_report_shows_each_interleaved_comparison_by_registry_name():
    from isacir.pilot.report import build_report

    teams = {"1": "A", "2": "B", "3": "A"}
    log = []
    for n, confirmed in enumerate([1, 1, 3, 2, None]):  # v3 wins 3, v2 wins 1, one search unjudged
        verdicts = [{"candidate_id": confirmed, "verdict": "confirmed"}] if confirmed else []
        log.append({"query_id": f"q{n}", "created": T0 + n, "mode": "tokens", "text": "red", "results": [1, 2, 3],
                    "version": "QE+AD", "model_version": "v3", "latency_ms": 5.0,
                    "interleave": {"A": "v3", "B": "v2", "teams": teams}, "verdicts": verdicts})  # fmt: skip
    page, _ = build_report(log)
    section = page[page.index("<h2>Interleaved comparisons</h2>") :]
    row = section[section.index("<tbody>") : section.index("</tbody>")]
    cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
    assert cells[:6] == ["v3 vs v2", "5", "4", "3", "1", "0"] and cells[6].startswith("0.750")
    assert cells[7] == "not yet"  # four decided searches cannot tell
    assert "No interleaved search" in build_report(log[:0])[0]
