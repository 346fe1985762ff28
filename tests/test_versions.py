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
from serve_helpers import make_images, start_server
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
    return {"tmp": tmp, "images": images, "registry": reg}


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
