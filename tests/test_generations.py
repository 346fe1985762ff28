"""A foundation upgrade, blue/green: a second gallery generation built beside the serving one,
served at the same time, switched under load, and retired, against a real uvicorn."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import requests
from serve_helpers import make_images, post_search, start_server
from typer.testing import CliRunner

KEY = {"X-API-Key": "test-key"}


def _cli(*args):
    from isacir.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None


def _encoder(folder, fnd, seed):
    import torch

    from isacir.query import QueryEncoder

    torch.manual_seed(seed)
    QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).save_pretrained(folder)
    return folder


def _oracle(gallery_dir, generation, fnd, qe_dir):
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.search import Retriever

    qe = QueryEncoder.from_pretrained(qe_dir, foundation=fnd).eval()
    return Retriever(Gallery.open(gallery_dir, generation=generation), fnd, qe, itm_cache_bytes=0)


def test_a_foundation_upgrade_with_no_downtime(tmp_path, openclip_fnd):
    from isacir.edge.payload import decode_payload, encode_payload
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.gallery.generations import GenerationError, Generations
    from isacir.registry import Registry
    from isacir.serve import load_service
    from isacir.testing import save_tiny_openclip

    home = tmp_path / "gallery"
    make_images(tmp_path / "images", 10)
    g = Gallery.open_or_create(home, openclip_fnd)
    g.index([str(tmp_path / "images")], openclip_fnd, progress=False)
    g.close()
    new_name = save_tiny_openclip(tmp_path / "new-foundation", seed=7)
    new_fnd = create_foundation(new_name)
    assert new_fnd.fingerprint != openclip_fnd.fingerprint

    reg = Registry.of_gallery(home)
    reg.add("v1", _encoder(tmp_path / "v1", openclip_fnd, 1), actor="test")
    reg.set_state("v1", "active", actor="test", force=True, reason="first")
    time.sleep(0.01)
    reg.add("w1", _encoder(tmp_path / "w1", new_fnd, 2), actor="test")
    reg.set_state("w1", "active", actor="test", force=True, reason="the new foundation's first version")

    # build the new generation beside the serving one (the CLI, as an operator would)
    built = _cli(
        "index", "--gallery", str(home), "--generation", "g2", "--foundation", new_name, "--json", "--no-progress"
    )
    assert built["items"] == built["source_items"] == 10 and built["encoded"] == 10 and built["state"] == "ready"
    again = _cli("index", "--gallery", str(home), "--generation", "g2", "--json", "--no-progress")
    assert again["encoded"] == 0 and again["unchanged"] == 10  # resumable: nothing is encoded twice
    gens = {x["name"]: x for x in _cli("gallery", "generations", "--gallery", str(home), "--json")}
    assert gens["main"]["serving"] and gens["g2"]["state"] == "ready"
    assert gens["g2"]["foundation_fingerprint"] == new_fnd.fingerprint
    main_g, g2_g = Gallery.open(home, generation="main"), Gallery.open(home, generation="g2")
    assert [it["id"] for it in main_g.items()] == [it["id"] for it in g2_g.items()]  # the same items, same ids
    main_g.close()

    # an item indexed into the serving generation alone: the new one lacks it, so no switch yet
    make_images(tmp_path / "late", 1, seed=5)
    serving = Gallery.open(home)
    serving.index([str(tmp_path / "late")], openclip_fnd, progress=False)
    serving.close()
    with pytest.raises(GenerationError, match="lacks 1 item"):
        Generations(home).promote("g2", actor="test")
    assert _cli("index", "--gallery", str(home), "--generation", "g2", "--json", "--no-progress")["encoded"] == 1

    (tmp_path / "keys.txt").write_text("test-key\n")
    app = load_service(home, api_key_file=tmp_path / "keys.txt", registry_poll_s=0.1)
    state = app.state.service
    server = start_server(app)
    query = make_images(tmp_path / "queries", 1, seed=11)[0]
    payloads = {
        "v1": encode_payload(
            state.lineup.by_name("v1").model.retriever.pseudo_tokens(query)[0].numpy(),
            reg.get("v1")["fingerprint"],
            "fp16",
        ),
        "w1": encode_payload(
            state.lineup.by_name("w1").model.retriever.pseudo_tokens(query)[0].numpy(),
            reg.get("w1")["fingerprint"],
            "fp16",
        ),
    }
    want = {}
    for name, gen, fnd in (("v1", "main", openclip_fnd), ("w1", "g2", new_fnd)):
        import torch

        tokens = torch.from_numpy(decode_payload(payloads[name]).tokens)[None]
        want[name] = [h.id for h in _oracle(home, gen, fnd, reg.path_of(name)).search(tokens=tokens, text="red", k=5)]
    assert want["v1"] != want["w1"]  # two embedding spaces: the oracles differ, so routing is visible

    answers, stop, lock = [], threading.Event(), threading.Lock()
    events: dict[str, float] = {}

    def client(kind):
        s = requests.Session()
        while not stop.is_set():
            t0 = time.time()
            if kind == "image":
                r = post_search(s, server.url, KEY, image=query, text="red")
            else:
                r = post_search(s, server.url, KEY, payload=base64.b64encode(payloads[kind]).decode(), text="red")
            with lock:
                answers.append((t0, time.time(), kind, r.status_code, r.json()))

    def each_kind_answered(since: float, n: int = 3) -> None:
        """Wait until every client has had ``n`` answers to requests sent after ``since``: each phase
        is seen by every kind of client however slow the machine is (no fixed sleep decides it)."""
        deadline = time.time() + 120
        while True:
            with lock:
                counts = {k: sum(1 for a in answers if a[2] == k and a[0] > since) for k in ("image", "v1", "w1")}
            if min(counts.values()) >= n:
                return
            assert time.time() < deadline, f"clients stalled: {counts}"
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,)) for k in ("image", "v1", "w1")]
    try:
        for t in threads:
            t.start()
        each_kind_answered(since=0)
        # an upload during the blue/green reaches both generations
        with open(make_images(tmp_path / "upload", 1, seed=13)[0], "rb") as f:
            up = requests.post(f"{server.url}/v1/gallery", headers=KEY, files=[("images", ("u.png", f, "image/png"))])
        assert up.status_code == 200, up.text
        new_id = up.json()["added"][0]["id"]
        events["promote"] = time.time()
        _cli("gallery", "promote-generation", "g2", "--gallery", str(home), "--reason", "upgrade")
        deadline = time.time() + 20
        while requests.get(f"{server.url}/v1/info", headers=KEY, timeout=10).json()["generation"] != "g2":
            assert time.time() < deadline, "the service did not switch generations"
            time.sleep(0.05)
        events["promoted"] = time.time()
        each_kind_answered(since=events["promoted"])
        events["retire"] = time.time()
        retired = _cli("gallery", "retire-generation", "main", "--gallery", str(home), "--reason", "devices moved")
        assert retired["state"] == "retired"
        deadline = time.time() + 20
        while len(requests.get(f"{server.url}/v1/info", headers=KEY, timeout=10).json()["generations"]) != 1:
            assert time.time() < deadline, "the service did not drop the retired generation"
            time.sleep(0.05)
        events["retired"] = time.time()
        each_kind_answered(since=events["retired"])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.stop()
        state.close()

    bad = []
    for t0, t1, kind, status, body in answers:
        if status == 200 and kind in want and t1 < events.get("retire", float("inf")):
            # answered from its own generation: the oracle's list, or it with the upload in it
            ids = [x["id"] for x in body["results"]]
            if ids != want[kind] and not (new_id in ids and [i for i in ids if i != new_id] == want[kind][:4]):
                bad.append((kind, "results", ids, want[kind]))
        if kind == "w1":
            ok = status == 200 and body["model_version"] == "w1"
        elif kind == "v1":
            if t0 > events["retired"]:
                ok = status == 409 and body["code"] == "foundation_mismatch" and body["active_version"] == "w1"
            elif t1 < events["retire"]:
                ok = status == 200 and body["model_version"] == "v1"
                if ok and t0 > events["promoted"]:
                    ok = body["upgrade"]["version"] == "w1"  # the old generation's devices are told to update
            else:
                ok = (status == 200 and body["model_version"] == "v1") or (
                    status == 409 and body["code"] == "foundation_mismatch"
                )
        else:
            if t1 < events["promote"]:
                ok = status == 200 and body["model_version"] == "v1"
            elif t0 > events["promoted"]:
                ok = status == 200 and body["model_version"] == "w1"
            else:
                ok = status == 200 and body["model_version"] in ("v1", "w1")
        if not ok:
            bad.append((kind, status, body.get("model_version"), body.get("code")))
    assert not bad, bad[:5]
    # both phases were seen by the old devices, and thin clients were answered by both foundations
    kinds = {(k, s, b.get("model_version")) for _, _, k, s, b in answers}
    assert {("v1", 200, "v1"), ("v1", 409, None), ("image", 200, "v1"), ("image", 200, "w1")} <= kinds
    # the upload was indexed into both generations under one id, and the retired vectors are gone
    assert Gallery.open(home).path_of(new_id) is not None
    assert Gallery.open(home, generation_root=True).count() == 0
    with pytest.raises(Exception, match="retired"):
        Gallery.open(home, generation="main")
