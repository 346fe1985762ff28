"""Learning cycles: the policy file, the decision on live evidence, and whole cycles on a tiny model
(promote a good candidate, roll back a bad one, resume after a kill, one cycle at a time)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import make_images

from isacir.cycle import CycleBusy, CyclePolicy, CycleStore, LearningCycle, judge
from isacir.cycle.policy import parse_window
from isacir.errors import ConfigError, IsacirError

# ----- the policy --------------------------------------------------------------------------------


def test_a_policy_file_with_every_table(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        '[trigger]\nmin_new_verdicts = 500\nmin_hours_between = 24\nwindow = "22:30-04:00"\n'
        '[adapt]\nrecipe = "auto"\nsteps = 50\n'
        '[rollout]\ncanary_share = 0.2\ncompare = "canary"\nmin_comparisons = 120\nmax_days = 5\n'
        '[notify]\nwebhook = "https://ops.example/hook"\n'
    )
    p = CyclePolicy.from_toml(path)
    assert (p.min_new_verdicts, p.min_hours_between, p.window) == (500, 24, (22 * 60 + 30, 4 * 60))
    assert (p.canary_share, p.compare, p.min_comparisons, p.max_days) == (0.2, "canary", 120, 5)
    assert p.adapt_settings().recipe == "auto" and p.adapt_settings().steps == 50
    assert p.to_dict()["window"] == "22:30-04:00" and p.webhook == "https://ops.example/hook"
    # a window past midnight wraps
    assert p.in_window(23 * 60) and p.in_window(60) and not p.in_window(12 * 60) and not p.in_window(4 * 60)
    assert CyclePolicy().in_window(12 * 60)  # no window: any time
    assert CyclePolicy(window=parse_window("01:00-05:00")).in_window(4 * 60 + 59)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[triger]\nmin_new_verdicts = 5\n", "unknown table"),
        ("[trigger]\nmin_verdicts = 5\n", "unknown key"),
        ('[trigger]\nwindow = "25:00-03:00"\n', "HH:MM-HH:MM"),
        ('[trigger]\nwindow = "03:00-03:00"\n', "empty"),
        ("[trigger]\nmin_new_verdicts = 0\n", "at least 1"),
        ('[rollout]\ncompare = "ab"\n', "interleave, canary"),
        ("[rollout]\ncanary_share = 1.5\n", "within"),
        ('[adapt]\nrecipe = "magic"\n', "--recipe"),
        ("[adapt]\nsteps_per_day = 3\n", "unknown setting"),
        ('[notify]\nwebhook = "ftp://x"\n', "http"),
        ("trigger = 3\n", "must be a table"),
        ("[trigger\n", "not valid TOML"),
    ],
)
def test_a_bad_policy_is_refused_when_read(tmp_path, text, message):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        CyclePolicy.from_toml(path)


def test_a_missing_policy_file_is_named():
    with pytest.raises(ConfigError, match="does not exist"):
        CyclePolicy.from_toml("/nonexistent/policy.toml")


# ----- the decision, on hand-made logs -----------------------------------------------------------

T0 = 1_800_000_000.0


def _row(n: int, version: str | None, verdicts: list[tuple[int, str]], interleave=None, results=(1, 2, 3)) -> dict:
    return {
        "query_id": f"q{n}",
        "created": T0 + n,
        "model_version": version,
        "results": list(results),
        "interleave": interleave,
        "verdicts": [{"candidate_id": c, "verdict": v, "verdict_s": 4.0} for c, v in verdicts],
    }


def _interleaved(n: int, winner: str | None, a: str = "cand", b: str = "v1") -> dict:
    """An interleaved search (A = ``a``): items 1 and 3 are A's, 2 is B's; the operator confirms
    the ``winner`` team's item (None: a rejection only, a tie)."""
    teams = {"1": "A", "2": "B", "3": "A"}
    verdicts = [(1 if winner == "A" else 2, "confirmed")] if winner else [(1, "rejected")]
    return _row(n, a, verdicts, {"A": a, "B": b, "teams": teams})


def test_interleaving_promotes_rolls_back_or_waits():
    policy = CyclePolicy(min_comparisons=40)
    wins = [_interleaved(i, "A" if i % 4 else "B") for i in range(60)]  # 45 wins, 15 losses
    ev = judge(wins, "cand", "v1", policy, T0, T0 + 3600)
    assert ev.decision == "promote" and ev.interleaving["wins"] == {"cand": 45, "v1": 15}
    assert ev.interleaving["win_rate_ci95"][0] > 0.5
    # the same log with the pair recorded the other way round (the candidate as B) says the same
    flipped = [_interleaved(i, "B" if i % 4 else "A", a="v1", b="cand") for i in range(60)]
    assert judge(flipped, "cand", "v1", policy, T0, T0 + 3600).interleaving["wins"] == {"cand": 45, "v1": 15}
    losses = [_interleaved(i, "B" if i % 4 else "A") for i in range(60)]
    assert judge(losses, "cand", "v1", policy, T0, T0 + 3600).decision == "roll_back"
    few = judge(wins[:30], "cand", "v1", policy, T0, T0 + 3600)
    assert few.decision == "wait" and "10 more" in few.reason
    even = [_interleaved(i, "A" if i % 2 else "B") for i in range(60)]
    assert judge(even, "cand", "v1", policy, T0, T0 + 3600).decision == "wait"
    # undecided at max_days: rolled back
    late = judge(even, "cand", "v1", policy, T0, T0 + 15 * 86400)
    assert late.decision == "roll_back" and "undecided" in late.reason
    # searches before the comparison began, ties, other pairs and unjudged searches do not count
    noise = [_interleaved(i, "A", b="v0") for i in range(100, 140)] + [_interleaved(i, None) for i in range(140, 150)]
    ev = judge(wins + noise, "cand", "v1", policy, T0 + 10, T0 + 3600)
    assert ev.interleaving["queries"] == 50 + 10 and ev.interleaving["ties"] == 10


def test_a_canary_with_more_false_hits_is_rolled_back_whatever_interleaving_says():
    policy = CyclePolicy(min_comparisons=40)
    wins = [_interleaved(i, "A") for i in range(60)]
    # alone, the candidate's first result is rejected 40 times in 50, the active version's 2 in 50
    alone = [_row(100 + i, "cand", [(1, "rejected")] if i < 40 else [(1, "confirmed")]) for i in range(50)]
    alone += [_row(200 + i, "v1", [(1, "rejected")] if i < 2 else [(1, "confirmed")]) for i in range(50)]
    ev = judge(wins + alone, "cand", "v1", policy, T0, T0 + 60)
    assert ev.decision == "roll_back" and "false-hit rate 0.800" in ev.reason
    assert ev.pilot["candidate"]["judged"] == 50 and ev.pilot["active"]["false_hit_rate"] == 0.04


def test_canary_pilot_metrics_decide_where_interleaving_is_off():
    policy = CyclePolicy(compare="canary", min_comparisons=30)
    better = [_row(i, "cand", [(1, "rejected")] if i < 3 else [(1, "confirmed")]) for i in range(40)]
    active = [_row(100 + i, "v1", [(1, "rejected")] if i < 8 else [(1, "confirmed")]) for i in range(40)]
    ev = judge(better + active, "cand", "v1", policy, T0, T0 + 60)
    assert ev.decision == "promote" and ev.interleaving is None
    assert ev.pilot["candidate"]["false_hit_rate"] == 3 / 40 and ev.pilot["active"]["false_hit_rate"] == 8 / 40
    assert judge(better[:20] + active, "cand", "v1", policy, T0, T0 + 60).decision == "wait"
    # a little worse, within the intervals: no promotion, and rolled back once time is up
    worse = [_row(i, "cand", [(1, "rejected")] if i < 10 else [(1, "confirmed")]) for i in range(40)]
    assert judge(worse + active, "cand", "v1", policy, T0, T0 + 60).decision == "wait"
    assert judge(worse + active, "cand", "v1", policy, T0, T0 + 30 * 86400).decision == "roll_back"


# ----- whole cycles on a tiny model ---------------------------------------------------------------

PROTOTYPES = 6


def _feedback(store, qe, fnd, ids: list[int], n: int, seed: int, version: str = "v1") -> None:
    """``n`` judged searches that can be learned: each is one of a few token prototypes (plus a
    little noise) with its own word, whose right answer is that prototype's image."""
    from isacir.edge.payload import encode_payload

    rng = np.random.default_rng(0)  # the prototypes are the same in every call
    scale = fnd.word_embedding_rms()
    protos = [rng.standard_normal((qe.num_tokens, qe.word_dim)) * scale for _ in range(PROTOTYPES)]
    words = ["red", "blue", "round", "tiny", "shiny", "square"]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        p = int(rng.integers(PROTOTYPES))
        tokens = (protos[p] + 0.05 * scale * rng.standard_normal(protos[p].shape)).astype(np.float32)
        shown = [int(x) for x in rng.choice([i for i in ids if i != ids[p]], 5, replace=False)]
        qid = store.log_query(
            "tokens", f"in {words[p]}", encode_payload(tokens, qe.fingerprint), 5, shown, qe.fingerprint,
            fnd.fingerprint, model_version=version,
        )  # fmt: skip
        store.add(qid, shown[0], "rejected")
        store.add(qid, ids[p], "corrected")


@pytest.fixture
def loop(tmp_path, openclip_fnd):
    """A gallery whose registry has v1 active (its query encoder and edge package), its feedback
    log, and a policy that trains a small adapter."""
    import torch

    from isacir.export import export_edge
    from isacir.feedback import FeedbackStore
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.registry import Registry

    make_images(tmp_path / "images", 16)
    gallery = Gallery.open_or_create(tmp_path / "gallery", openclip_fnd)
    gallery.index([str(tmp_path / "images")], openclip_fnd, progress=False)
    ids = [it["id"] for it in sorted(gallery.items(), key=lambda it: Path(it["path"]).name)]
    gallery.close()
    torch.manual_seed(1)
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
    qe.save_pretrained(tmp_path / "v1")
    export_edge(QueryEncoder.from_pretrained(tmp_path / "v1"), tmp_path / "v1-edge")
    reg = Registry.of_gallery(tmp_path / "gallery")
    reg.add("v1", tmp_path / "v1", edge=tmp_path / "v1-edge", actor="test")
    reg.set_state("v1", "active", actor="test", force=True, reason="the first version")
    store = FeedbackStore(tmp_path / "gallery" / "feedback.sqlite")
    policy = CyclePolicy(
        min_new_verdicts=60,
        adapt={"recipe": "custom", "steps": 80, "batch_size": 16, "gallery_negatives": 16, "holdout": 0.25},
        canary_share=0.25,
        min_comparisons=40,
    )
    return {"tmp": tmp_path, "gallery": tmp_path / "gallery", "registry": reg, "store": store, "qe": qe, "ids": ids,
            "policy": policy, "fnd": openclip_fnd}  # fmt: skip


def _cycle(loop, policy=None, **kwargs) -> LearningCycle:
    fnd = loop["fnd"]
    return LearningCycle(
        loop["gallery"], policy or loop["policy"], loop["store"], loop["registry"], actor="test",
        foundation=lambda: fnd, **kwargs,
    )  # fmt: skip


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _evidence(loop, candidate: str, win: bool, n: int = 60) -> None:
    """Interleaved searches of the candidate and v1, each judged; the candidate's item is the one
    confirmed when ``win``."""
    store, qe, fnd = loop["store"], loop["qe"], loop["fnd"]
    for i in range(n):
        qid = store.log_query(
            "image", "in red", None, 3, [1, 2, 3], qe.fingerprint, fnd.fingerprint, model_version=candidate,
            interleave={"A": candidate, "B": "v1", "teams": {"1": "A", "2": "B", "3": "A"}},
        )  # fmt: skip
        store.add(qid, 1 if win == (i % 5 != 0) else 2, "confirmed")


def test_a_cycle_trains_gates_serves_a_canary_and_promotes_a_good_candidate(loop):
    from isacir.audit import AuditLog
    from isacir.serve import load_service

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    policy = CyclePolicy(
        **{**loop["policy"].to_dict(), "window": None, "webhook": f"http://127.0.0.1:{server.server_port}/"}
    )
    cycle = _cycle(loop, policy)
    reg = loop["registry"]
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 30, seed=1)
    first = cycle.tick()
    assert first["action"] == "none" and "30 judged searches" in first["reason"] and "waits for 60" in first["reason"]
    assert cycle.status()["trigger"] == first["reason"] and not CycleStore(reg.folder).all()
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 50, seed=2)

    result = cycle.tick()
    c = result["cycle"]
    assert result["states"] == ["trained", "canary"] and c["state"] == "canary"
    name = c["candidate"]
    record = reg.get(name)
    assert record["state"] == "canary" and record["parent"] == "v1" and record["fingerprint"] == loop["qe"].fingerprint
    assert record["edge"] == reg.get("v1")["edge"]  # the same tokens: devices need no update
    trained = next(s for s in c["steps"] if s["step"] == "trained")
    assert trained["holdout"]["after"]["hit@1"] > trained["holdout"]["before"]["hit@1"]  # it learned
    gate = next(s for s in c["steps"] if s["step"] == "gate")
    assert gate["passed"] and gate["score"] >= gate["active_score"]
    # the candidate answers only inside interleaved searches, a quarter of them
    assert reg.rollout() == {"canary_share": 0.0, "interleave": [name, "v1"], "interleave_share": 0.25}
    # a service serving the registry interleaves the pair, whatever its own settings say
    (loop["tmp"] / "keys.txt").write_text("k\n")
    app = load_service(loop["gallery"], api_key_file=loop["tmp"] / "keys.txt", registry=reg.folder,
                       feedback_db=loop["tmp"] / "other.sqlite")  # fmt: skip
    state = app.state.service
    try:
        lineup = state.lineup
        assert lineup.interleave == (name, "v1") and lineup.interleave_share == 0.25 and lineup.canary_share == 0.0
    finally:
        state.close()

    waiting = cycle.tick()  # no evidence yet
    assert waiting["action"] == "waiting" and waiting["cycle"]["evidence"]["decision"] == "wait"
    _evidence(loop, name, win=True)
    done = cycle.tick()["cycle"]
    assert done["state"] == "promoted" and "preferred in 60 interleaved searches" in done["outcome"]
    assert reg.get(name)["state"] == "active" and reg.get("v1")["state"] == "deprecated"
    assert reg.rollout() == {"canary_share": None, "interleave": None, "interleave_share": None}
    promoted = [h for h in reg.history(name) if h.get("to") == "active"]
    assert promoted and promoted[-1]["gate"]["passed"] and promoted[-1]["actor"] == "test"
    events = [e["action"] for e in AuditLog.of_gallery(loop["gallery"]).entries() if e["action"].startswith("cycle.")]
    assert events == ["cycle.started", "cycle.trained", "cycle.canary", "cycle.promoted"]
    assert [h["event"] for h in _Hook.received] == ["started", "canary", "promoted"]
    assert _Hook.received[-1]["evidence"]["interleaving"]["wins"][name] == 48
    server.shutdown()
    # the next cycle waits for new verdicts since the promotion
    assert "0 judged searches since " + name in cycle.tick()["reason"]


def test_a_bad_candidate_is_rolled_back_and_the_active_version_stays(loop):
    cycle = _cycle(loop, CyclePolicy(**{**loop["policy"].to_dict(), "window": None, "webhook": "http://127.0.0.1:9/"}))
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=3)
    c = cycle.tick()["cycle"]
    assert c["state"] == "canary"
    _evidence(loop, c["candidate"], win=False)
    done = cycle.tick()["cycle"]
    reg = loop["registry"]
    assert done["state"] == "rolled_back" and "the active version is preferred" in done["outcome"]
    assert reg.get(c["candidate"])["state"] == "retired" and reg.get("v1")["state"] == "active"
    assert reg.rollout() == {"canary_share": None, "interleave": None, "interleave_share": None}
    # a webhook that cannot be reached is recorded, and never stops the cycle
    assert {e["event"] for e in done["webhook_errors"]} == {"started", "canary", "rolled_back"}


def test_training_with_nothing_to_learn_ends_the_cycle_as_failed(loop):
    cycle = _cycle(loop)
    result = cycle.tick(start=True, reason="a test")
    c = result["cycle"]
    assert c["state"] == "failed" and "no feedback to learn from" in c["outcome"] and c["reason"] == "a test"
    assert loop["registry"].versions()[-1]["version"] == "v1"  # nothing registered


def test_one_cycle_at_a_time(loop):
    store = CycleStore(loop["registry"].folder)
    with store.exclusive():
        with pytest.raises(CycleBusy, match="another process"):
            _cycle(loop).tick()


def test_a_crash_between_steps_resumes_without_a_second_version(loop, monkeypatch):
    from isacir.registry import Registry

    cycle = _cycle(loop)
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=4)
    real = Registry.set_state

    def crash(self, version, state, **kw):
        if state == "canary":
            raise SystemExit("killed after the version was added, before its canary")
        return real(self, version, state, **kw)

    monkeypatch.setattr(Registry, "set_state", crash)
    with pytest.raises(SystemExit):
        cycle.tick()
    reg = loop["registry"]
    (c,) = CycleStore(reg.folder).all()
    assert c["state"] == "trained" and reg.get(c["candidate"])["state"] == "staged"
    monkeypatch.setattr(Registry, "set_state", real)
    resumed = cycle.tick()["cycle"]
    assert resumed["id"] == c["id"] and resumed["state"] == "canary"
    assert [v["version"] for v in reg.versions()] == ["v1", c["candidate"]]
    assert [s["step"] for s in resumed["steps"]] == ["started", "trained", "gate", "canary"]


def test_a_cycle_killed_while_training_resumes(loop):
    """kill -9 of ``isacir cycle run`` while it trains: the record says training, the lock is free,
    and the next run trains again and carries on."""
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=5)
    policy = loop["tmp"] / "policy.toml"
    policy.write_text(
        '[trigger]\nmin_new_verdicts = 60\n[adapt]\nrecipe = "custom"\nsteps = 80\nbatch_size = 16\n'
        "gallery_negatives = 16\nholdout = 0.25\n[rollout]\ncanary_share = 0.25\nmin_comparisons = 40\n"
    )
    marker = loop["tmp"] / "training"
    script = (
        "import sys, time, pathlib\n"
        "import isacir.adapt.train as t\n"
        "def slow(*a, **k):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('x')\n"
        "    time.sleep(120)\n"
        "t.adapt = slow\n"
        "from isacir.cli import main\n"
        "sys.argv = ['isacir', 'cycle', 'run', '--gallery', sys.argv[1], '--policy', sys.argv[2], '--no-progress']\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(loop["gallery"]), str(policy)])
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the cycle did not reach training"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (c,) = CycleStore(loop["registry"].folder).all()
    assert c["state"] == "training"
    resumed = _cycle(loop).tick()["cycle"]
    assert resumed["id"] == c["id"] and resumed["state"] == "canary"


def test_the_command_line(loop, tmp_path):
    from typer.testing import CliRunner

    from isacir.cli import app

    policy = tmp_path / "policy.toml"
    policy.write_text("[trigger]\nmin_new_verdicts = 5\n")
    runner = CliRunner()
    base = ["--gallery", str(loop["gallery"]), "--policy", str(policy)]
    result = runner.invoke(app, ["cycle", "status", *base, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["active"] == "v1" and status["new_verdicts"] == 0 and "waits for 5" in status["trigger"]
    result = runner.invoke(app, ["cycle", "run", *base, "--start"])
    assert result.exit_code != 0 and "--reason" in str(result.exception)
    result = runner.invoke(app, ["cycle", "run", *base, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout.strip().splitlines()[-1])["action"] == "none"
    from isacir.registry import Registry

    with pytest.raises(IsacirError, match="no active version"):
        LearningCycle(loop["gallery"], CyclePolicy(), loop["store"], Registry(tmp_path / "empty")).tick()


# ----- the service: the loop in the background, and the console's actions ------------------------


def _admin_service(loop, tmp_path):
    from isacir.serve import load_service
    from isacir.serve.keys import hash_key

    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "owner"\nsha256 = "{hash_key("admin-secret")}"\nscopes = ["models:admin", "search"]\n'
        f'[[keys]]\nname = "desk"\nsha256 = "{hash_key("operator-secret")}"\nscopes = ["search", "feedback"]\n'
    )
    app = load_service(loop["gallery"], api_key_file=keys, registry=loop["registry"].folder,
                       feedback_db=loop["gallery"] / "feedback.sqlite", registry_poll_s=0.1)  # fmt: skip
    return app.state.service


def test_the_service_runs_cycles_in_the_background_and_the_console_needs_models_admin(loop, tmp_path):
    import requests
    from serve_helpers import start_server

    from isacir.audit import AuditLog
    from isacir.serve import create_app

    state = _admin_service(loop, tmp_path)
    server = start_server(create_app(state))
    admin, desk = {"X-API-Key": "admin-secret"}, {"X-API-Key": "operator-secret"}
    url = server.url
    try:
        # without the loop: the console says so
        assert requests.get(f"{url}/v1/admin/cycle", headers=admin, timeout=10).json() == {"enabled": False}
        r = requests.post(f"{url}/v1/admin/cycle", headers=admin, json={"start": True, "reason": "x"}, timeout=10)
        assert r.status_code == 409 and r.json()["code"] == "learning_off"
        fnd = loop["fnd"]
        state.attach_learning(_cycle(loop), every_s=3600)  # the schedule never fires during the test
        # every admin route refuses a key without models:admin, and acts on nothing
        for method, path, body in (
            ("get", "/v1/admin/cycle", None),
            ("post", "/v1/admin/cycle", {"start": True, "reason": "try"}),
            ("post", "/v1/admin/versions/v1", {"to": "deprecated", "reason": "try"}),
            ("put", "/v1/admin/rollout", {"canary_share": 0.5, "reason": "try"}),
            ("get", "/v1/admin/audit", None),
        ):
            r = requests.request(method, url + path, headers=desk, json=body, timeout=10)
            assert r.status_code == 403 and r.json()["code"] == "forbidden", (path, r.text)
        assert loop["registry"].get("v1")["state"] == "active" and not CycleStore(loop["registry"].folder).all()
        # a reason is required
        r = requests.post(f"{url}/v1/admin/cycle", headers=admin, json={"start": True, "reason": " "}, timeout=10)
        assert r.status_code == 422

        _feedback(loop["store"], loop["qe"], fnd, loop["ids"], 80, seed=6)
        r = requests.post(f"{url}/v1/admin/cycle", headers=admin, json={"start": True, "reason": "week 1"}, timeout=10)
        assert r.status_code == 202, r.text
        deadline = time.time() + 120
        while True:
            body = requests.get(f"{url}/v1/admin/cycle", headers=admin, timeout=10).json()
            if body["last"] is not None and not body["running"]:
                break
            assert time.time() < deadline, body
            time.sleep(0.2)
        assert body["last"]["action"] == "advanced" and body["last"]["by"] == "owner"
        name = body["status"]["last"]["candidate"]
        assert body["status"]["last"]["state"] == "canary"
        # the service serves the canary interleaved with the active version at once
        versions = requests.get(f"{url}/v1/versions", headers=admin, timeout=10).json()
        assert versions["interleave"] == [name, "v1"] and versions["interleave_share"] == 0.25
        # the console's own actions: the traffic split, then a roll back by hand
        split = {"canary_share": 0.05, "interleave": None, "reason": "less risk"}
        r = requests.put(f"{url}/v1/admin/rollout", headers=admin, json=split, timeout=10)
        assert r.status_code == 200
        assert r.json()["rollout"] == {"canary_share": 0.05, "interleave": None, "interleave_share": None}
        assert requests.get(f"{url}/v1/versions", headers=admin, timeout=10).json()["canary_share"] == 0.05
        r = requests.put(f"{url}/v1/admin/rollout", headers=admin,
                         json={"interleave": ["v1", "nope"], "reason": "typo"}, timeout=10)  # fmt: skip
        assert r.status_code == 409 and "nope" in r.json()["detail"]
        r = requests.post(f"{url}/v1/admin/versions/{name}", headers=admin, json={"to": "retired", "reason": "by hand"},
                          timeout=10)  # fmt: skip
        assert r.status_code == 200 and r.json()["version"]["state"] == "retired"
        r = requests.post(f"{url}/v1/admin/versions/ghost", headers=admin, json={"to": "retired", "reason": "x"},
                          timeout=10)  # fmt: skip
        assert r.status_code == 404
        r = requests.post(f"{url}/v1/admin/versions/{name}", headers=admin, json={"to": "active", "reason": "x"},
                          timeout=10)  # fmt: skip
        assert r.status_code == 409  # retired is the end
        # the next step sees the retirement: the cycle ends as rolled back
        assert state.learner.request(False, "", "test")
        deadline = time.time() + 60
        while CycleStore(loop["registry"].folder).all()[-1]["state"] == "canary":
            assert time.time() < deadline
            time.sleep(0.2)
        assert CycleStore(loop["registry"].folder).all()[-1]["state"] == "rolled_back"
        audit = requests.get(f"{url}/v1/admin/audit?limit=50", headers=admin, timeout=10).json()
        actions = [e["action"] for e in audit["entries"]]
        assert actions[0] == "cycle.rolled_back" and "models.state" in actions and "cycle.requested" in actions
        assert audit["entries"][0]["time"] >= audit["entries"][-1]["time"]
        requested = next(e for e in AuditLog.of_gallery(loop["gallery"]).entries() if e["action"] == "cycle.requested")
        assert requested["actor"] == "owner" and requested["reason"] == "week 1"
    finally:
        server.stop()
        state.close()


def test_device_searches_are_interleaved_at_the_cycles_share(loop, tmp_path):
    """A canary that is an adapter on the active version's encoder reads the same device tokens,
    so device searches are interleaved too, a quarter of them, each merged by team draft."""
    from fastapi.testclient import TestClient

    from isacir.edge.payload import encode_payload
    from isacir.pilot.interleaving import query_seed, team_draft
    from isacir.serve import create_app

    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=9)
    name = _cycle(loop).tick()["cycle"]["candidate"]
    state = _admin_service(loop, tmp_path)
    rng = np.random.default_rng(4)
    qe, fnd = loop["qe"], loop["fnd"]
    merged = alone = 0
    with TestClient(create_app(state)) as client:
        for _ in range(200):
            tokens = (rng.standard_normal((qe.num_tokens, qe.word_dim)) * fnd.word_embedding_rms()).astype(np.float32)
            payload = base64.b64encode(encode_payload(tokens, qe.fingerprint)).decode()
            r = client.post("/v1/search/tokens", headers={"X-API-Key": "operator-secret"},
                            json={"payload": payload, "text": "in red", "k": 6})  # fmt: skip
            assert r.status_code == 200, r.text
            body = r.json()
            if "interleaving" not in body:
                assert body["model_version"] == "v1"  # the rest go to the active version alone
                alone += 1
                continue
            merged += 1
            assert body["interleaving"] == {"A": name, "B": "v1"}
            if merged <= 3:  # the merge is the team draft of both versions' own answers
                ranks = []
                for version in (name, "v1"):
                    served = state.lineup.by_name(version)
                    hits = served.model.retriever.search(text="in red", tokens=torch.from_numpy(tokens)[None], k=6)
                    ranks.append([h.id for h in hits])
                want = team_draft(ranks[0], ranks[1], 6, query_seed(body["query_id"]))
                assert [x["id"] for x in body["results"]] == want.items
    # binomial(200, 0.25): 50 expected, 4 standard deviations either side
    assert abs(merged - 50) <= 4 * (200 * 0.25 * 0.75) ** 0.5 and merged + alone == 200
    logged = [q for q in loop["store"].queries() if q["mode"] == "tokens" and q.get("interleave")]
    assert len(logged) == merged and all(q["tokens"] for q in logged)


def test_an_adapter_trained_elsewhere_is_offered_through_the_same_gate(loop, tmp_path):
    from isacir.adapt import AdaptSettings, adapt
    from isacir.gallery import Gallery

    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=10)
    g = Gallery.open(loop["gallery"])
    try:
        settings = AdaptSettings(recipe="custom", steps=60, batch_size=16, gallery_negatives=16, holdout=0.25)
        adapt(g, loop["fnd"], loop["qe"], loop["store"], tmp_path / "mine", settings, progress=False)
    finally:
        g.close()
    cycle = _cycle(loop)
    with pytest.raises(IsacirError, match="reason"):
        cycle.offer(tmp_path / "mine", " ")
    with pytest.raises(IsacirError):
        cycle.offer(tmp_path, "not an adapter folder")
    result = cycle.offer(tmp_path / "mine", "trained by hand with another recipe")
    c = result["cycle"]
    assert [s["step"] for s in c["steps"]][:2] == ["started", "offered"] and "trained" not in [
        s["step"] for s in c["steps"]
    ]
    assert c["state"] in ("canary", "refused")  # the gate decides, as for a cycle's own adapter
    record = loop["registry"].get(c["candidate"])
    assert record["adapter"]["fingerprint"] == next(s for s in c["steps"] if s["step"] == "offered")["adapter"]
    if c["state"] == "canary":
        with pytest.raises(IsacirError, match="under way"):
            cycle.offer(tmp_path / "mine", "again")


def test_an_offered_adapter_is_judged_on_the_log_not_on_its_own_report(loop, tmp_path):
    """An adapter trained on shuffled positives carries a report of its own data that may look fine;
    the gate judges it against the active version on the real log, and refuses it."""
    from isacir.adapt import AdaptSettings, adapt
    from isacir.adapter import QueryAdapter
    from isacir.feedback import FeedbackStore
    from isacir.gallery import Gallery
    from isacir_lab.shapes.operations_bench import _shuffled_log

    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=11)
    cycle = _cycle(loop)
    name = cycle.tick()["cycle"]["candidate"]
    _evidence(loop, name, win=True)
    assert cycle.tick()["cycle"]["state"] == "promoted"  # the active version now has a good adapter
    reg = loop["registry"]
    _shuffled_log(loop["gallery"] / "feedback.sqlite", tmp_path / "shuffled.sqlite", loop["ids"], seed=0)
    g = Gallery.open(loop["gallery"])
    try:
        settings = AdaptSettings(recipe="custom", steps=80, batch_size=16, gallery_negatives=16, holdout=0.25)
        previous = QueryAdapter.from_pretrained(reg.path_of(name, "adapter"))
        adapt(g, loop["fnd"], loop["qe"], FeedbackStore(tmp_path / "shuffled.sqlite"), tmp_path / "bad", settings,
              previous=previous, progress=False)  # fmt: skip
    finally:
        g.close()
    c = cycle.offer(tmp_path / "bad", "a deliberately bad adapter")["cycle"]
    assert c["state"] == "refused" and "fails the quality gate" in c["outcome"]
    report = json.loads(Path(c["gate_report"]).read_text())
    assert report["baseline"]["adapter"] == reg.get(name)["adapter"]["fingerprint"]
    assert report["score"] < report["baseline"]["score"] and report["n"] >= 80
    assert reg.get(c["candidate"])["state"] == "retired" and reg.get(name)["state"] == "active"
