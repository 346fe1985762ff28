"""Fault campaign: kill -9 the service in the middle of writes, restart it, and lose nothing acknowledged."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import free_port, make_images

from isacir.edge.payload import encode_payload
from isacir.gallery import Gallery
from isacir.serve.local import start_serve, stop_serve

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
KEY = {"X-API-Key": "fault-key"}


def _serve(gallery: Path, qe: Path, keys: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "isacir.cli", "serve", "--gallery", str(gallery), "--query-encoder", str(qe)]
    cmd += ["--port", str(port), "--api-key-file", str(keys), "--threads", "1"]
    log = keys.parent / f"serve-{port}.log"
    return start_serve(cmd, f"http://127.0.0.1:{port}/readyz", log, ENV, start_timeout=120)


def _verified(gallery: Path) -> Gallery:
    """The gallery, reopened, after ``verify`` found the database and the store in agreement."""
    g = Gallery.open(gallery)
    report = g.verify()
    assert report["ok"], report
    return g


def _png(i: int) -> bytes:
    arr = np.random.default_rng(10_000 + i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_kill_9_during_uploads_and_feedback_loses_nothing_acknowledged(tmp_path, openclip_fnd, tiny_openclip_dir):
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    make_images(tmp_path / "seed-images", 10)
    fnd = create_foundation(tiny_openclip_dir[0])
    g = Gallery.open_or_create(tmp_path / "gallery", fnd)
    g.index([str(tmp_path / "seed-images")], fnd, progress=False)
    g.close()
    qe = QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
    qe.save_pretrained(tmp_path / "qe")
    tokens = qe.encode_images([Image.new("RGB", (48, 48), (200, 30, 30))], foundation=fnd)[0].numpy()
    payload = base64.b64encode(encode_payload(tokens, qe.fingerprint, "fp16")).decode()
    (tmp_path / "keys").write_text("fault-key\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    server = _serve(tmp_path / "gallery", tmp_path / "qe", tmp_path / "keys", port)
    uploads: dict[int, str] = {}  # acknowledged: gallery id -> sha256 of the bytes
    queries: list[str] = []  # acknowledged query ids
    verdicts: dict[int, str] = {}  # acknowledged feedback id -> query id
    sent_feedback = 0
    stop = threading.Event()

    def upload_stream():
        i = 0
        while not stop.is_set():
            data = _png(i)
            try:
                r = requests.post(f"{url}/v1/gallery", headers=KEY, files=[("images", (f"u{i}.png", data))], timeout=30)
            except requests.RequestException:
                return
            if r.status_code == 200:
                uploads[r.json()["added"][0]["id"]] = hashlib.sha256(data).hexdigest()
            i += 1

    def feedback_stream():
        nonlocal sent_feedback
        while not stop.is_set():
            try:
                r = requests.post(f"{url}/v1/search/tokens", headers=KEY, json={"payload": payload, "k": 3}, timeout=30)
                if r.status_code != 200:
                    continue
                answer = r.json()
                queries.append(answer["query_id"])
                body = {
                    "query_id": answer["query_id"],
                    "verdict": "confirmed",
                    "candidate_id": answer["results"][0]["id"],
                }
                sent_feedback += 1
                f = requests.post(f"{url}/v1/feedback", headers=KEY, json=body, timeout=30)
            except requests.RequestException:
                return
            if f.status_code == 200:
                verdicts[f.json()["feedback_id"]] = answer["query_id"]

    threads = [threading.Thread(target=upload_stream), threading.Thread(target=feedback_stream)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while (len(uploads) < 8 or len(verdicts) < 8) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(server.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    server.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(uploads) >= 8 and len(verdicts) >= 8, (len(uploads), len(verdicts))

    server = _serve(tmp_path / "gallery", tmp_path / "qe", tmp_path / "keys", port)
    try:
        for item, digest in uploads.items():
            r = requests.get(f"{url}/v1/images/{item}", headers=KEY, timeout=30)
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == digest, item
        # the restarted service searches and logs as before
        r = requests.post(f"{url}/v1/search/tokens", headers=KEY, json={"payload": payload, "k": 3}, timeout=30)
        assert r.status_code == 200
    finally:
        stop_serve(server, timeout=30)

    g = _verified(tmp_path / "gallery")
    stored = {it["id"]: it["hash"] for it in g.items()}
    assert set(uploads) <= set(stored)  # every acknowledged upload is indexed and found by its own vector
    hashes = [h for h in stored.values() if h is not None]
    assert len(hashes) == len(set(hashes))  # no file indexed twice
    verify_cli = subprocess.run(
        [sys.executable, "-m", "isacir.cli", "gallery", "verify", str(tmp_path / "gallery"), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert verify_cli.returncode == 0 and json.loads(verify_cli.stdout.strip().splitlines()[-1])["ok"]

    store = FeedbackStore(tmp_path / "gallery" / "feedback.sqlite")
    rows = store.rows()
    by_id = {r["feedback_id"]: r["query_id"] for r in rows}
    assert all(by_id.get(fid) == qid for fid, qid in verdicts.items())  # every acknowledged verdict is there
    assert len(rows) <= sent_feedback  # and none twice
    logged = {q["query_id"] for q in store.queries()}
    assert set(queries) <= logged  # durable query log: every query id a client saw survived


@pytest.mark.slow
def test_several_writers_on_one_served_gallery_lose_nothing(tmp_path, tiny_openclip_dir):
    """API uploads and deletes on a running service while `isacir index` and `isacir gallery rm` run
    against the same gallery from other processes: afterwards the database and the store agree, and
    every item's own image finds that item first."""
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder
    from isacir.search import Retriever

    fnd = create_foundation(tiny_openclip_dir[0])
    seed = make_images(tmp_path / "seed-images", 12, seed=1)
    g = Gallery.open_or_create(tmp_path / "gallery", fnd)
    g.index([str(tmp_path / "seed-images")], fnd, progress=False)
    seed_ids = g.ids_for_paths([str(p) for p in seed])
    g.close()
    QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).save_pretrained(
        tmp_path / "qe"
    )
    (tmp_path / "keys").write_text("fault-key\n")
    make_images(tmp_path / "cli-images", 16, seed=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path / "gallery", tmp_path / "qe", tmp_path / "keys", port)
    api_kept: list[int] = []
    api_deleted: list[int] = []
    try:
        cli = [sys.executable, "-m", "isacir.cli"]
        to_remove = sorted(seed_ids.values())[:4]
        others = [
            subprocess.Popen(
                [*cli, "index", str(tmp_path / "cli-images"), "--gallery", str(tmp_path / "gallery"), "--no-progress"],
                env=ENV,
                stderr=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(
                [*cli, "gallery", "rm", *map(str, to_remove), "--gallery", str(tmp_path / "gallery")],
                env=ENV,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ]
        i = 0
        # keep uploading and deleting for as long as the other writers run (and at least 14 times)
        while i < 14 or any(proc.poll() is None for proc in others):
            r = requests.post(
                f"{url}/v1/gallery", headers=KEY, files=[("images", (f"a{i}.png", _png(500 + i)))], timeout=120
            )
            assert r.status_code == 200, r.text
            item = r.json()["added"][0]["id"]
            if i % 3 == 0:
                assert requests.delete(f"{url}/v1/gallery/{item}", headers=KEY, timeout=120).status_code == 200
                api_deleted.append(item)
            else:
                api_kept.append(item)
            i += 1
        for proc in others:
            assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
        # while the service is idle, another process changes the gallery; then the service writes again:
        # it must start from that process's index, not from its own older one
        late = sorted(seed_ids.values())[4:6]
        subprocess.run(
            [*cli, "gallery", "rm", *map(str, late), "--gallery", str(tmp_path / "gallery")], env=ENV, check=True
        )
        to_remove += late
        for j in range(3):
            r = requests.post(
                f"{url}/v1/gallery", headers=KEY, files=[("images", (f"b{j}.png", _png(1_000_000 + j)))], timeout=120
            )
            assert r.status_code == 200, r.text
            api_kept.append(r.json()["added"][0]["id"])
        assert len(set(api_kept)) == len(api_kept)  # every upload was a new image
        # the service sees what the other processes did without a restart
        r = requests.get(f"{url}/healthz", timeout=30).json()
        assert r["gallery_items"] == 12 - 6 + 16 + len(api_kept)
    finally:
        stop_serve(server, timeout=30)

    g = _verified(tmp_path / "gallery")
    items = {it["id"]: it["path"] for it in g.items()}
    assert len(items) == 12 - 6 + 16 + len(api_kept)
    assert not set(to_remove) & set(items) and not set(api_deleted) & set(items) and set(api_kept) <= set(items)
    retriever = Retriever(g, fnd)
    for item, path in items.items():
        assert [h.id for h in retriever.search(image=path, mode="image_only", k=1)] == [item], path
