"""Backup while the service writes, restore into an empty folder: nothing acknowledged before the
backup began is missing, every generation verifies, and searches answer as the original did."""

from __future__ import annotations

import base64
import io
import tarfile
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import build_service

from isacir import backup as backup_mod
from isacir.backup import MANIFEST_NAME, BackupError, backup, read_backup_manifest, restore
from isacir.edge.payload import encode_payload
from isacir.gallery import Gallery
from isacir.registry import Registry


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(1000 + seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class _Traffic:
    """Uploads and searches with verdicts through the API from two threads, recording what was
    acknowledged and when."""

    def __init__(self, client: TestClient, state):
        self.client, self.state = client, state
        self.uploads: list[tuple[float, int]] = []
        self.verdicts: list[tuple[float, str]] = []
        self.stop = threading.Event()
        qe = state.query_encoder
        tokens = np.random.default_rng(0).standard_normal((qe.num_tokens, qe.word_dim)).astype(np.float32)
        raw = encode_payload(tokens * state.foundation.word_embedding_rms(), state.qe_fingerprint)
        self.payload = base64.b64encode(raw).decode()
        self.threads = [threading.Thread(target=self._upload), threading.Thread(target=self._judge)]

    def _upload(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            r = self.client.post("/v1/gallery", files={"images": (f"u{n}.png", _png(n), "image/png")})
            if r.status_code == 200:
                self.uploads.append((time.monotonic(), r.json()["added"][0]["id"]))
            time.sleep(0.02)  # a steady stream, not a flood: the backup is what is measured

    def _judge(self) -> None:
        while not self.stop.is_set():
            r = self.client.post("/v1/search/tokens", json={"payload": self.payload, "text": "red", "k": 3})
            if r.status_code != 200:
                continue
            answer = r.json()
            body = {"query_id": answer["query_id"], "verdict": "confirmed", "candidate_id": answer["results"][0]["id"]}
            f = self.client.post("/v1/feedback", json=body)
            if f.status_code == 200:
                self.verdicts.append((time.monotonic(), answer["query_id"]))

    def __enter__(self) -> _Traffic:
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 60
        while (len(self.uploads) < 3 or len(self.verdicts) < 3) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture
def served(tmp_path, openclip_fnd):
    app, state, _ = build_service(tmp_path / "site", openclip_fnd, api_key=None, n_images=12)
    qe_dir = tmp_path / "qe"
    state.query_encoder.save_pretrained(qe_dir)
    Registry.of_gallery(state.home).add("v1", qe_dir, actor="test", reason="first")
    state.gallery.checkpoint()  # an index on disk, as a served gallery soon has
    return app, state


def _top_ids(gallery: Gallery, queries: np.ndarray, k: int, keep: set[int] | None = None) -> list[list[int]]:
    rows = gallery.search(queries, k + 64)
    return [[h.id for h in row if keep is None or h.id in keep][:k] for row in rows]


def test_a_backup_under_load_restores_everything_acknowledged_and_answers_alike(served, tmp_path):
    app, state = served
    with TestClient(app) as client, _Traffic(client, state) as traffic:
        started = time.monotonic()
        manifest = backup(state.home, tmp_path / "backup.tar")
        finished = time.monotonic()
    acked_uploads = [i for t, i in traffic.uploads if t < started]
    acked_verdicts = [q for t, q in traffic.verdicts if t < started]
    assert len(acked_uploads) >= 3 and len(acked_verdicts) >= 3
    during = [t for t, _ in traffic.uploads + traffic.verdicts if started < t < finished]
    assert during, "writes went on during the backup"
    assert manifest["generations"]["main"]["index_generation"] is not None  # the index travelled

    out = tmp_path / "restored"
    report = restore(tmp_path / "backup.tar", out)
    home = out / "gallery"
    restored = Gallery.open(home)
    ids = set(restored.ids().tolist())
    assert set(acked_uploads) <= ids, "an upload acknowledged before the backup began is missing"
    assert len(ids) == manifest["generations"]["main"]["items"] == report["generations"]["main"]["items"]
    check = report["generations"]["main"]["verify"]
    assert check["ok"] and not any("gone from disk" in w for w in check["warnings"])
    # uploaded images moved with the gallery: their paths are under the restored folder, ids unchanged
    uploads = [it for it in restored.items() if "/uploads/" in it["path"]]
    assert uploads and all(it["path"].startswith(str(home / "uploads")) for it in uploads)
    assert report["generations"]["main"]["paths_moved"] == len(uploads)

    from isacir.feedback.postgres import open_store

    log = open_store(home / "feedback.sqlite")
    judged = {r["query_id"] for r in log.rows()}
    assert set(acked_verdicts) <= judged
    assert log.counts() == manifest["feedback"]["counts"] == report["feedback"]["counts"]
    log.close()

    # the same searches answer alike: the original's results among the items the backup holds
    _, vecs = restored.vectors(sorted(ids)[:20])
    assert _top_ids(restored, vecs, 10) == _top_ids(state.gallery, vecs, 10, keep=ids)
    restored.close()

    reg = Registry(home / "models")
    assert [v["version"] for v in reg.versions()] == ["v1"] and report["registry"] == 1
    assert sorted(p.name for p in reg.path_of("v1").iterdir()) == sorted(
        p.name for p in Registry.of_gallery(state.home).path_of("v1").iterdir()
    )
    assert reg.history()[0]["reason"] == "first"


def test_restore_refuses_a_damaged_backup_and_a_folder_in_use(served, tmp_path):
    _, state = served
    out = tmp_path / "b.tar"
    manifest = backup(state.home, out)
    assert read_backup_manifest(out)["generations"] == manifest["generations"]
    catalogue = "gallery/meta.sqlite"
    bad = tmp_path / "bad.tar"
    with tarfile.open(out) as tar, tarfile.open(bad, "w") as new:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None
            if m.name == catalogue:
                data = data[:-1] + bytes([data[-1] ^ 1])
            new.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(BackupError, match="damaged"):
        restore(bad, tmp_path / "r1")
    assert [p.name for p in (tmp_path / "r1").iterdir()] == []
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "something").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        restore(out, tmp_path / "r2")
    with pytest.raises(BackupError, match="not a gallery"):
        backup(tmp_path, tmp_path / "c.tar")
    assert MANIFEST_NAME == tarfile.open(out).getnames()[0]


def test_an_index_the_log_no_longer_reaches_is_left_out_and_rebuilt(served, tmp_path, monkeypatch):
    """A writer's checkpoints may trim the change log past the index copied a moment before; the
    backup tries again, and at worst leaves the index out: the restore rebuilds it from the catalogue."""
    _, state = served
    assert (state.home / "faiss" / "index.faiss").is_file()
    real = backup_mod._catalogue_state
    calls = []

    def trimmed(db):
        floor, gen, items = real(db)
        calls.append(1)
        return gen + 1, gen, items  # the log starts after every index the backup copied

    monkeypatch.setattr(backup_mod, "_catalogue_state", trimmed)
    manifest = backup(state.home, tmp_path / "b.tar")
    assert len(calls) == backup_mod.INDEX_TRIES and manifest["generations"]["main"]["index_generation"] is None
    assert not any(f["path"].startswith("gallery/faiss/") for f in manifest["files"])
    report = restore(tmp_path / "b.tar", tmp_path / "r")
    assert report["generations"]["main"]["verify"]["ok"]
    assert report["generations"]["main"]["items"] == state.gallery.count()


def test_a_postgresql_feedback_log_is_dumped_and_restored_into_another_database(served, tmp_path, postgres):
    from isacir.feedback.postgres import open_store

    _, state = served
    source = postgres.new_database()
    log = open_store(source)
    for n in range(5):
        qid = log.log_query("tokens", f"red {n}", None, 3, [1, 2, 3], "qe", "fnd")
        log.add(qid, 1, "confirmed")
    want = log.counts()
    log.close()
    manifest = backup(state.home, tmp_path / "b.tar", feedback_db=source)
    assert manifest["feedback"] == {"kind": "postgresql", "counts": want}
    with pytest.raises(BackupError, match="PostgreSQL dump"):
        restore(tmp_path / "b.tar", tmp_path / "r0")
    target = postgres.new_database()
    report = restore(tmp_path / "b.tar", tmp_path / "r", feedback_db=target)
    assert report["feedback"]["counts"] == want


def test_verdicts_that_arrive_while_postgresql_is_dumped_are_in_neither_the_dump_nor_its_counts(
    served, tmp_path, postgres, monkeypatch
):
    """The counts a restore checks against come from the dump's own snapshot: a verdict written while
    pg_dump runs (here: the moment it ends) is in neither, so the restore's check holds."""
    import isacir.backup as backup_module
    from isacir.feedback.postgres import open_store

    _, state = served
    source = postgres.new_database()
    log = open_store(source)
    qid = log.log_query("tokens", "red", None, 3, [1, 2, 3], "qe", "fnd")
    log.add(qid, 1, "confirmed")
    before = log.counts()
    real_dump = backup_module._pg_dump

    def dump_then_a_verdict_arrives(*args, **kwargs):
        real_dump(*args, **kwargs)
        log.add(qid, 2, "rejected")

    monkeypatch.setattr(backup_module, "_pg_dump", dump_then_a_verdict_arrives)
    manifest = backup(state.home, tmp_path / "b.tar", feedback_db=source)
    assert manifest["feedback"]["counts"] == before and log.counts() != before
    log.close()
    report = restore(tmp_path / "b.tar", tmp_path / "r", feedback_db=postgres.new_database())
    assert report["feedback"]["counts"] == before


def test_the_cli_backs_up_and_restores_with_one_json_line_each(served, tmp_path):
    import json

    from typer.testing import CliRunner

    from isacir.cli import app as cli

    _, state = served
    runner = CliRunner()
    made = runner.invoke(cli, ["backup", "--gallery", str(state.home), "--out", str(tmp_path / "b.tar"), "--json"])
    assert made.exit_code == 0, made.output
    manifest = json.loads(made.stdout.strip().splitlines()[-1])
    assert manifest["generations"]["main"]["items"] == state.gallery.count() and "files" not in manifest
    back = runner.invoke(cli, ["restore", str(tmp_path / "b.tar"), "--out", str(tmp_path / "r"), "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout.strip().splitlines()[-1])["generations"]["main"]["verify"]["ok"]
    again = runner.invoke(cli, ["restore", str(tmp_path / "b.tar"), "--out", str(tmp_path / "r")])
    assert isinstance(again.exception, BackupError) and "not empty" in str(again.exception)


def test_every_live_generation_travels_and_a_retired_one_does_not(tmp_path, openclip_fnd):
    """A gallery mid-upgrade: the serving generation and a second one built for a new foundation;
    both come back with their items and ids, each verified; the ledger says which serves."""
    from serve_helpers import make_images

    from isacir.foundation import create_foundation
    from isacir.gallery.generations import Generations
    from isacir.testing import save_tiny_openclip

    home = tmp_path / "gallery"
    make_images(tmp_path / "images", 8)
    g = Gallery.open_or_create(home, openclip_fnd)
    g.index([str(tmp_path / "images")], openclip_fnd, progress=False)
    g.checkpoint()
    g.close()
    new_fnd = create_foundation(save_tiny_openclip(tmp_path / "new-foundation", seed=7))
    report = Generations(home).build("g2", new_fnd, progress=False, actor="test")
    assert report["state"] == "ready"
    manifest = backup(home, tmp_path / "b.tar")
    assert set(manifest["generations"]) == {"main", "g2"}
    restored = restore(tmp_path / "b.tar", tmp_path / "r")
    assert {n: g["items"] for n, g in restored["generations"].items()} == {"main": 8, "g2": 8}
    assert all(g["verify"]["ok"] for g in restored["generations"].values())
    back = tmp_path / "r" / "gallery"
    originals = {n: Gallery.open(home, generation=n) for n in ("main", "g2")}
    copies = {n: Gallery.open(back, generation=n) for n in ("main", "g2")}
    for n in ("main", "g2"):
        assert sorted(copies[n].ids().tolist()) == sorted(originals[n].ids().tolist())
        _, vecs = originals[n].vectors(sorted(originals[n].ids().tolist())[:4])
        assert _top_ids(copies[n], vecs, 5) == _top_ids(originals[n], vecs, 5)
    assert Generations(back).serving()["name"] == "main"
    for gal in (*originals.values(), *copies.values()):
        gal.close()
    # once retired, a generation's vectors are gone: the next backup leaves it out
    Generations(home).retire("g2", actor="test")
    assert set(backup(home, tmp_path / "c.tar")["generations"]) == {"main"}
