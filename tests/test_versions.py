"""Several query-side versions served at once, from a model registry, against a real uvicorn.

Two encoders of one tiny foundation (and a third of another foundation) are registered with
their ONNX edge packages; payloads come from the ONNX edge runner, as a device makes them.
Oracles are independent of the service: a fresh retriever per version says what that version
answers, and the registry's states say which version may answer at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import make_images, post_search, start_server
from typer.testing import CliRunner

from isacir.edge.payload import decode_payload, encode_payload

KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, openclip_fnd):
    """A gallery, a registry with v1 (active) and v2 (staged), both with edge packages, and a
    version of another foundation (active for that foundation)."""
    import torch

    from isacir.export import export_edge
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.registry import Registry
    from isacir.testing import save_tiny_openclip

    tmp = tmp_path_factory.mktemp("versions")
    images = make_images(tmp / "images", 12)
    queries = make_images(tmp / "queries", 6, seed=9)  # photos that are not in the gallery
    gallery = Gallery.open_or_create(tmp / "gallery", openclip_fnd)
    gallery.index([str(tmp / "images")], openclip_fnd, progress=False)
    gallery.close()
    reg = Registry.of_gallery(tmp / "gallery")
    for name, seed in (("v1", 1), ("v2", 2)):
        torch.manual_seed(seed)
        qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
        qe.save_pretrained(tmp / name)
        export_edge(QueryEncoder.from_pretrained(tmp / name), tmp / f"{name}-edge")
        reg.add(name, tmp / name, edge=tmp / f"{name}-edge", actor="test")
    reg.set_state("v1", "active", actor="test", force=True, reason="the first version")
    other = create_foundation(save_tiny_openclip(tmp / "other-foundation", seed=7))
    torch.manual_seed(3)
    QueryEncoder.create(other, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).save_pretrained(
        tmp / "w1"
    )
    reg.add("w1", tmp / "w1", actor="test")
    reg.set_state("w1", "active", actor="test", force=True, reason="the other foundation's first version")
    return {"tmp": tmp, "images": images, "queries": queries, "registry": reg}


def _serve(world, tmp_path, **kwargs):
    """The service over a copy of the registry that this test may change."""
    from isacir.registry import Registry
    from isacir.serve import load_service

    reg = Registry(tmp_path / "models")
    shutil.copytree(world["registry"].folder, reg.folder)
    (tmp_path / "keys.txt").write_text("test-key\n")
    app = load_service(
        world["tmp"] / "gallery",
        api_key_file=tmp_path / "keys.txt",
        registry=reg.folder,
        registry_poll_s=0.1,
        feedback_db=tmp_path / "feedback.sqlite",
        **kwargs,
    )
    return app.state.service, start_server(app), reg


def _payload(world, version: str, image, dtype: str = "fp16") -> str:
    """What a device on ``version`` sends: its ONNX model's tokens, as a payload."""
    from isacir.edge import EdgeEncoder

    enc = EdgeEncoder(world["registry"].path_of(version, "edge"))
    return base64.b64encode(enc.payload(image, dtype=dtype)).decode()


def _oracle(world, openclip_fnd, version: str):
    """A fresh retriever of one version, built apart from the service."""
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.search import Retriever

    qe = QueryEncoder.from_pretrained(world["registry"].path_of(version), foundation=openclip_fnd).eval()
    return Retriever(Gallery.open(world["tmp"] / "gallery"), openclip_fnd, qe, itm_cache_bytes=0)


def _tokens_search(url, payload, text="in red", k=5):
    return requests.post(f"{url}/v1/search/tokens", headers=KEY, json={"payload": payload, "text": text, "k": k})


def _image_search(url, image, text="in red", k=5):
    with open(image, "rb") as f:
        return requests.post(
            f"{url}/v1/search", headers=KEY, files={"image": ("ref.png", f, "image/png")}, data={"text": text, "k": k}
        )


def _wait_for(url, predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = requests.get(f"{url}/v1/versions", headers=KEY, timeout=10).json()
        if predicate({v["version"]: v["state"] for v in body["versions"]}):
            return body
        time.sleep(0.05)
    raise AssertionError(f"the service did not pick up the registry change: {body}")


def _cli(*args):
    from isacir.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_release_flow_from_the_cli(world, openclip_fnd, tmp_path):
    """staged -> 409 encoder_unknown; promoted -> both answer and the old one is told to upgrade;
    retired -> 409 encoder_retired; another foundation's encoder -> 409 foundation_mismatch."""
    state, server, reg = _serve(world, tmp_path)
    where = ["--registry", str(reg.folder)]
    try:
        image = world["images"][3]
        p1, p2 = _payload(world, "v1", image), _payload(world, "v2", image)
        r = _tokens_search(server.url, p1)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "v1" and body["version_state"] == "active" and "upgrade" not in body
        want = [h.id for h in _oracle(world, openclip_fnd, "v1").search(tokens=_tokens_of(p1), text="in red", k=5)]
        assert [x["id"] for x in body["results"]] == want

        r = _tokens_search(server.url, p2)
        assert r.status_code == 409 and r.json()["code"] == "encoder_unknown", r.text
        assert r.json()["active_version"] == "v1" and "staged" in r.json()["detail"]

        _cli("models", "promote", "v2", "--to", "active", *where, "--force", "--reason", "test release")
        _wait_for(server.url, lambda s: s.get("v2") == "active" and s.get("v1") == "deprecated")
        old, new = _tokens_search(server.url, p1), _tokens_search(server.url, p2)
        assert old.status_code == new.status_code == 200, (old.text, new.text)
        assert old.json()["model_version"] == "v1" and old.json()["upgrade"]["version"] == "v2"
        assert old.json()["upgrade"]["fingerprint"] == reg.get("v2")["fingerprint"]
        assert new.json()["model_version"] == "v2" and "upgrade" not in new.json()
        want2 = [h.id for h in _oracle(world, openclip_fnd, "v2").search(tokens=_tokens_of(p2), text="in red", k=5)]
        assert [x["id"] for x in new.json()["results"]] == want2
        # the thin client moved to the active version; the query log names who answered
        thin = _image_search(server.url, image)
        assert thin.status_code == 200 and thin.json()["model_version"] == "v2"
        state.query_log.flush()
        logged = {q["query_id"]: q for q in state.feedback.queries()}
        assert logged[old.json()["query_id"]]["model_version"] == "v1"
        assert logged[new.json()["query_id"]]["model_version"] == "v2"
        assert logged[thin.json()["query_id"]]["query_encoder_fingerprint"] == reg.get("v2")["fingerprint"]

        # the manifest names the active version's package, and its sha256 is the download's
        manifest = requests.get(f"{server.url}/v1/edge/manifest", headers=KEY, timeout=10).json()
        assert manifest["version"] == "v2" and manifest["fingerprint"] == reg.get("v2")["fingerprint"]
        pkg = requests.get(server.url + manifest["url"], headers=KEY, timeout=30)
        assert pkg.status_code == 200 and hashlib.sha256(pkg.content).hexdigest() == manifest["sha256"]
        assert len(pkg.content) == manifest["size"] and pkg.headers["etag"] == f'"{manifest["sha256"]}"'
        part = requests.get(server.url + manifest["url"], headers={**KEY, "Range": "bytes=100-"}, timeout=30)
        assert part.status_code == 206 and part.content == pkg.content[100:]

        _cli("models", "retire", "v1", *where, "--reason", "no device left on it")
        _wait_for(server.url, lambda s: "v1" not in s)
        r = _tokens_search(server.url, p1)
        assert r.status_code == 409 and r.json()["code"] == "encoder_retired" and r.json()["active_version"] == "v2"
        assert set(r.json()) == {"detail", "code", "active_version"}

        foreign = encode_payload(np.zeros((2, openclip_fnd.word_dim), np.float32), reg.get("w1")["fingerprint"])
        r = _tokens_search(server.url, base64.b64encode(foreign).decode())
        assert r.status_code == 409 and r.json()["code"] == "foundation_mismatch", r.text
        assert r.json()["active_version"] == "v2"
        r = _tokens_search(
            server.url, base64.b64encode(encode_payload(np.zeros((2, 8), np.float32), "ab" * 8)).decode()
        )
        assert r.status_code == 409 and r.json()["code"] == "encoder_unknown"
    finally:
        server.stop()
        state.close()


def _tokens_of(payload_b64: str):
    import torch

    return torch.from_numpy(decode_payload(base64.b64decode(payload_b64)).tokens)[None]


# ----- changes without a restart, under load --------------------------------------------------------
#: the registry states the load test walks through; each change is applied while searches run
STATES = [
    {"v1": "active", "v2": "staged"},
    {"v1": "active", "v2": "canary"},
    {"v1": "deprecated", "v2": "active"},
    {"v1": "retired", "v2": "active"},
]


def _fits(states: dict, kind: str, sent_by: str | None, status: int, body: dict) -> bool:
    """Whether one answer is what the registry in ``states`` allows (an oracle apart from the service)."""
    if kind == "tokens":
        st = states[sent_by]
        if st in ("active", "canary", "deprecated"):
            return status == 200 and body["model_version"] == sent_by and ("upgrade" in body) == (st == "deprecated")
        code = {"retired": "encoder_retired", "staged": "encoder_unknown"}[st]
        return status == 409 and body["code"] == code
    answering = {v for v, st in states.items() if st in ("active", "canary")}
    return status == 200 and body["model_version"] in answering


def test_three_registry_changes_under_load_lose_no_request(world, openclip_fnd, tmp_path):
    state, server, reg = _serve(world, tmp_path, canary_share=0.5)
    image = world["images"][5]
    payloads = {v: _payload(world, v, image) for v in ("v1", "v2")}
    want = {
        v: [h.id for h in _oracle(world, openclip_fnd, v).search(tokens=_tokens_of(payloads[v]), text="in red", k=5)]
        for v in ("v1", "v2")
    }
    changes: list[float] = []  # when each change was written
    answers: list[tuple] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(kind: str, sent_by: str | None):
        session = requests.Session()
        while not stop.is_set():
            t0 = time.time()
            try:
                if kind == "tokens":
                    r = post_search(session, server.url, KEY, payload=payloads[sent_by], text="in red")
                else:
                    r = post_search(session, server.url, KEY, image=image, text="in red")
                status, body = r.status_code, r.json()
            except (requests.RequestException, ValueError) as exc:
                status, body = -1, {"error": repr(exc)}
            with lock:
                answers.append((t0, time.time(), kind, sent_by, status, body))

    threads = [
        threading.Thread(target=client, args=args)
        for args in (("tokens", "v1"), ("tokens", "v2"), ("image", None), ("tokens", "v1"))
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(0.8)
        steps = [
            lambda: reg.set_state("v2", "canary", actor="test"),
            lambda: reg.set_state("v2", "active", actor="test", force=True, reason="load test"),
            lambda: reg.set_state("v1", "retired", actor="test", reason="load test"),
        ]
        for n, step in enumerate(steps, start=1):
            changes.append(time.time())
            step()
            expected = STATES[n]
            _wait_for(
                server.url,
                lambda s, e=expected: (
                    {v: s.get(v, "retired") for v in e}
                    == {v: (st if st in ("active", "canary", "deprecated") else "retired") for v, st in e.items()}
                ),
            )
            time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.stop()
        state.close()

    assert len(answers) > 40, len(answers)
    assert all(status in (200, 409) for *_, status, _ in answers), [a for a in answers if a[4] not in (200, 409)][:3]
    misfits = []
    for t0, t1, kind, sent_by, status, body in answers:
        # the registry states in force at some moment of the request: a change written just before
        # it started may not be applied yet (the service polls), so the one before counts too
        first = max(0, sum(c <= t0 for c in changes) - 1)
        last = sum(c <= t1 for c in changes)
        if not any(_fits(STATES[i], kind, sent_by, status, body) for i in range(first, last + 1)):
            misfits.append((kind, sent_by, status, body.get("model_version"), body.get("code"), first, last))
        if status == 200 and kind == "tokens":
            # answered by a whole model: exactly what that version answers on its own
            assert [x["id"] for x in body["results"]] == want[body["model_version"]], body
    assert not misfits, misfits[:5]
    seen = {(kind, sent_by, status, body.get("model_version")) for _, _, kind, sent_by, status, body in answers}
    # every phase was exercised: v2 refused while staged, both versions on the thin client, v1 retired
    assert ("tokens", "v2", 409, None) in seen and ("tokens", "v1", 409, None) in seen
    assert ("image", None, 200, "v1") in seen and ("image", None, 200, "v2") in seen
    assert state.metrics.reloads._value.get() == 3


def test_interleaving_merges_two_versions_and_credits_confirmations(world, openclip_fnd, tmp_path):
    from isacir.pilot.interleaving import query_seed, team_draft
    from isacir.registry import Registry

    folder = tmp_path / "models"
    shutil.copytree(world["registry"].folder, folder)
    Registry(folder).set_state("v2", "canary", actor="test")
    from isacir.serve import load_service

    (tmp_path / "keys.txt").write_text("test-key\n")
    app = load_service(
        world["tmp"] / "gallery",
        api_key_file=tmp_path / "keys.txt",
        registry=folder,
        interleave=("v1", "v2"),
        feedback_db=tmp_path / "feedback.sqlite",
    )
    state, server = app.state.service, start_server(app)
    try:
        oracles = {v: _oracle(world, openclip_fnd, v) for v in ("v1", "v2")}
        for n, image in enumerate(world["queries"]):
            r = _image_search(server.url, image, k=6)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["interleaving"] == {"A": "v1", "B": "v2"}
            pil = Image.open(image)
            ranks = [[h.id for h in oracles[v].search(image=pil, text="in red", k=6)] for v in ("v1", "v2")]
            merged = team_draft(ranks[0], ranks[1], 6, query_seed(body["query_id"]))
            assert [x["id"] for x in body["results"]] == merged.items
            assert {x["id"]: x["team"] for x in body["results"]} == merged.teams
            teams = {x["id"]: x["team"] for x in body["results"]}
            # operators: query 0 confirms an A item, 1 a B item, 2 one of each, 3 only rejects, 4 nothing
            pick = {0: ["A"], 1: ["B"], 2: ["A", "B"], 3: [], 5: ["B"]}.get(n)
            if pick is None:
                continue
            for team in pick:
                item = next(i for i, t in teams.items() if t == team)
                fb = requests.post(
                    f"{server.url}/v1/feedback",
                    headers=KEY,
                    json={"query_id": body["query_id"], "verdict": "confirmed", "candidate_id": item},
                )
                assert fb.status_code == 200, fb.text
            if not pick:
                fb = requests.post(
                    f"{server.url}/v1/feedback",
                    headers=KEY,
                    json={
                        "query_id": body["query_id"],
                        "verdict": "rejected",
                        "candidate_id": body["results"][0]["id"],
                    },
                )
                assert fb.status_code == 200
        report = requests.get(f"{server.url}/v1/interleaving", headers=KEY, timeout=10).json()
        (cmp,) = report["comparisons"]
        assert cmp["versions"] == {"A": "v1", "B": "v2"} and cmp["interleaved_queries"] == 6
        assert cmp["queries"] == 5 and cmp["wins"] == {"v1": 1, "v2": 2} and cmp["ties"] == 2
        assert cmp["win_rate"] == round(1 / 3, 4) and cmp["win_rate_ci95"][0] < 1 / 3 < cmp["win_rate_ci95"][1]
    finally:
        server.stop()
        state.close()


# ----- device updates ----------------------------------------------------------------------------------
def test_edge_update_downloads_checks_swaps_and_rolls_back(world, tmp_path):
    from isacir.edge.update import EdgeUpdateError, installed, update, versions_dir

    state, server, reg = _serve(world, tmp_path)
    reg.set_state("v2", "active", actor="test", force=True, reason="device update test")
    _wait_for(server.url, lambda s: s.get("v2") == "active")
    fp1, fp2 = reg.get("v1")["fingerprint"], reg.get("v2")["fingerprint"]
    device = tmp_path / "device" / "edge"
    shutil.copytree(world["tmp"] / "v1-edge", device)  # what export-edge wrote, v1
    keyfile = tmp_path / "device.key"
    keyfile.write_text("test-key\n")
    args = ["edge-update", "--server", server.url, "--edge", str(device), "--api-key-file", str(keyfile)]
    try:
        out = json.loads(_cli(*args, "--no-progress").stdout.strip().splitlines()[-1])
        assert out["updated"] and out["version"] == "v2" and out["previous"] == f"local-{fp1[:12]}"
        assert device.is_symlink() and installed(device)["query_encoder_fingerprint"] == fp2
        manifest = requests.get(f"{server.url}/v1/edge/manifest", headers=KEY, timeout=10).json()
        assert out["sha256"] == manifest["sha256"] and out["checks"]["fp32_runs"]
        # the updated device's payloads are answered by v2, the old one's by v1 with an upgrade notice
        from isacir.edge import EdgeEncoder

        p = base64.b64encode(EdgeEncoder(device).payload(world["queries"][0], dtype="int8")).decode()
        r = _tokens_search(server.url, p)
        assert r.status_code == 200 and r.json()["model_version"] == "v2"

        again = json.loads(_cli(*args, "--no-progress").stdout.strip().splitlines()[-1])
        assert again == {"updated": False, "version": "v2", "fingerprint": fp2}

        back = json.loads(_cli("edge-update", "--edge", str(device), "--rollback").stdout.strip().splitlines()[-1])
        assert back == {"rolled_back_to": f"local-{fp1[:12]}", "from": "v2"}
        assert installed(device)["query_encoder_fingerprint"] == fp1

        # an interrupted download resumes with a range request: a wrong prefix proves the resume
        # (the sha256 check fails and the partial file is dropped), a right one completes
        partial = versions_dir(device) / f".partial-{manifest['sha256'][:16]}"
        package = requests.get(server.url + manifest["url"], headers=KEY, timeout=30).content
        partial.write_bytes(b"\0" * 1000)
        with pytest.raises(EdgeUpdateError, match="does not match the manifest"):
            update(server.url, device, "test-key", progress=False)
        assert not partial.exists() and installed(device)["query_encoder_fingerprint"] == fp1
        partial.write_bytes(package[:1000])
        resumed = update(server.url, device, "test-key", progress=False)
        assert resumed["updated"] and resumed["sha256"] == manifest["sha256"]
        assert installed(device)["query_encoder_fingerprint"] == fp2
        # only the version in use and the one before it are kept
        kept = {p.name for p in versions_dir(device).iterdir()}
        assert kept == {"state.json", "v2", f"local-{fp1[:12]}"}

        with pytest.raises(EdgeUpdateError, match="HTTP 401"):
            update(server.url, device, "wrong-key", progress=False)
    finally:
        server.stop()
        state.close()


def test_packages_are_reproducible_and_checked(world, tmp_path):
    import io
    import tarfile

    from isacir.edge.package import EdgePackageError, build_package, extract_package
    from isacir.edge.update import EdgeUpdateError, check_package

    edge = world["tmp"] / "v1-edge"
    a = build_package(edge, tmp_path / "a.tar.gz")
    time.sleep(1.1)  # a package must not depend on when it was built
    b = build_package(edge, tmp_path / "b.tar.gz")
    assert a == b and (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["model.onnx", "edge.json"]

    fp1 = world["registry"].get("v1")["fingerprint"]
    folder = tmp_path / "unpacked"
    extract_package(tmp_path / "a.tar.gz", folder)
    assert check_package(folder, {"fingerprint": fp1})["fp32_runs"]
    with pytest.raises(EdgeUpdateError, match="manifest names"):
        check_package(folder, {"fingerprint": "0" * 16})
    cfg = json.loads((folder / "edge.json").read_text())
    cfg["verification"]["onnx_vs_torch_max_abs_diff"] = cfg["verification"]["tolerance"] * 2
    (folder / "edge.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgeUpdateError, match="parity report"):
        check_package(folder, {"fingerprint": fp1})

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(EdgePackageError, match="not a plain top-level file"):
        extract_package(evil, tmp_path / "evil")
    assert not (tmp_path / "escape.txt").exists()


def _fake_model(name: str, qe_fp: str, adapter_fp: str | None = None):
    from types import SimpleNamespace

    from isacir.serve.lineup import Model

    adapter = SimpleNamespace(fingerprint=adapter_fp) if adapter_fp else None
    return Model(name, SimpleNamespace(fingerprint=qe_fp), adapter, SimpleNamespace(close=lambda: None))


def test_routing_between_an_active_version_and_a_canary_of_the_same_encoder():
    """An adapter version shares its encoder's fingerprint: payloads split by the canary share."""
    from isacir.serve.lineup import Lineup, LineupError, Served

    base, tuned = _fake_model("v1", "aaaa"), _fake_model("v1+fb", "aaaa", "ffff")
    lineup = Lineup((Served(base, "active"), Served(tuned, "canary")), foundation_fingerprint="F", canary_share=0.25)
    assert lineup.for_tokens("aaaa", 0.1).name == "v1+fb" and lineup.for_tokens("aaaa", 0.3).name == "v1"
    assert lineup.for_thin_client(0.2).name == "v1+fb" and lineup.for_thin_client(0.9).name == "v1"
    # the share holds over many requests: within 4 standard deviations of 0.25 over 4000 draws
    rng = random.Random(0)
    share = sum(lineup.for_tokens("aaaa", rng.random()).name == "v1+fb" for _ in range(4000)) / 4000
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    # promoted: the adapter version answers the same devices, and they need no upgrade
    promoted = Lineup((Served(tuned, "active"), Served(base, "deprecated")), foundation_fingerprint="F")
    assert promoted.for_tokens("aaaa", 0.0).name == "v1+fb"
    assert promoted.upgrade_for(promoted.for_tokens("aaaa", 0.0)) is None
    with pytest.raises(LineupError, match="not served"):
        Lineup((Served(base, "active"),), interleave=("v1", "v9"))
    with pytest.raises(LineupError, match="within 0..1"):
        Lineup((Served(base, "active"),), canary_share=1.5)
