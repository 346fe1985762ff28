"""Searches never wait for a rebuild or a persist; the FAISS index persists in checkpoints, and the
change log (committed with every change) carries everything in between, across processes and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from isacir.bench.search import make_data
from isacir.gallery import FaissStore, Gallery
from isacir.gallery.stores import faiss_store as stores_module


def _index_json(g: Gallery) -> dict:
    return json.loads((g.dir / "faiss" / "index.json").read_text())


def _log_rows(g: Gallery) -> int:
    return g.db().execute("SELECT COUNT(*) FROM changes").fetchone()[0]


def test_small_writes_are_durable_in_the_log_and_persist_in_checkpoints(tmp_path, openclip_fnd):
    dim = openclip_fnd.embed_dim
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    data = make_data(300, dim, seed=1)
    g.add_vectors([f"a{i}" for i in range(200)], data[:200])
    g.checkpoint()
    persisted = _index_json(g)["generation"]
    assert persisted == g.generation() and _index_json(g)["count"] == 200
    for i in range(200, 300, 20):  # five small uploads: none rewrites the index file
        g.add_vectors([f"a{j}" for j in range(i, i + 20)], data[i : i + 20])
    assert _index_json(g)["generation"] == persisted and g.store.count() == 300
    assert g.search(data[299:300], 1)[0][0].path == "a299"  # searchable at once
    assert _log_rows(g) == 300  # kept back to the checkpoint before the last one (here: the start)
    # another process (here: another instance) sees every item by replaying the log
    reader = Gallery.open(tmp_path / "g")
    assert reader.store.count() == 300 and reader.verify()["ok"]
    # enough changes make a checkpoint due
    g.CHECKPOINT_CHANGES = 50
    g.add_vectors(["b0"], make_data(1, dim, seed=7))
    assert _index_json(g)["generation"] == g.generation() and _index_json(g)["count"] == 301
    # the log keeps one checkpoint's worth back, so a reader a little behind replays
    floor = g.db().execute("SELECT value FROM state WHERE key='log_floor'").fetchone()[0]
    assert floor == persisted and _log_rows(g) == 101
    assert reader.search(data[299:300], 1)[0][0].path == "a299" and reader.store.count() == 301
    # close() persists what this process wrote
    g.add_vectors(["c0"], make_data(1, dim, seed=8))
    assert _index_json(g)["count"] == 301
    g.close()
    assert _index_json(reader)["count"] == 302 and _index_json(reader)["generation"] == reader.generation()


def test_a_time_based_checkpoint_is_due_after_a_quiet_while(tmp_path, openclip_fnd, monkeypatch):
    dim = openclip_fnd.embed_dim
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    g.add_vectors(["a"], make_data(1, dim, seed=1))
    g.checkpoint()
    g.add_vectors(["b"], make_data(1, dim, seed=2))
    assert _index_json(g)["count"] == 1
    g.CHECKPOINT_SECONDS = 0.0
    g.add_vectors(["c"], make_data(1, dim, seed=3))
    assert _index_json(g)["count"] == 3


def test_kill_9_between_checkpoints_loses_nothing(tmp_path, openclip_fnd):
    """A writer killed after acknowledging 40 small batches that were never checkpointed."""
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    g.add_vectors(["seed"], make_data(1, openclip_fnd.embed_dim, seed=1))
    g.checkpoint()
    g.close()
    script = f"""
import sys, numpy as np
from isacir.gallery import Gallery
from isacir.bench.search import make_data
g = Gallery.open({str(tmp_path / "g")!r})
data = make_data(400, {openclip_fnd.embed_dim}, seed=5)
for b in range(40):
    g.add_vectors([f"k{{b}}-{{j}}" for j in range(10)], data[b * 10:(b + 1) * 10])
print("acked", flush=True)
sys.stdin.read()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "acked"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reopened = Gallery.open(tmp_path / "g")
    assert _index_json(reopened)["count"] == 1  # the index file never saw them ...
    report = reopened.verify()
    assert report["ok"] and report["items"] == report["store_items"] == 401  # ... the log did


class _Gate:
    """Blocks a wrapped call until released, and says when it has started."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def wrap(self, fn):
        def blocked(*args, **kwargs):
            self.started.set()
            assert self.release.wait(30), "the gate was never released"
            return fn(*args, **kwargs)

        return blocked


def _search_while(g: Gallery, gate: _Gate, query: np.ndarray, action) -> list[float]:
    """Run ``action`` in a thread; once it is blocked inside the gate, search and time it."""
    worker = threading.Thread(target=action)
    worker.start()
    assert gate.started.wait(30)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert g.search(query, 3)[0]
        times.append(time.perf_counter() - t0)
    still_blocked = worker.is_alive()
    gate.release.set()
    worker.join(30)
    assert still_blocked, "the action finished before the searches: nothing was tested"
    return times


def test_searches_go_on_while_a_new_ivf_index_trains(tmp_path, openclip_fnd, monkeypatch):
    dim = openclip_fnd.embed_dim
    monkeypatch.setattr(stores_module, "EXACT_LIMIT", 2_000)
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    data = make_data(2_500, dim, seed=3)
    g.add_vectors([f"a{i}" for i in range(1_900)], data[:1_900])
    assert g.store.params["type"] == "flat"
    gate = _Gate()
    monkeypatch.setattr(FaissStore, "build", gate.wrap(FaissStore.build))
    times = _search_while(g, gate, data[:1], lambda: g.add_vectors([f"b{i}" for i in range(600)], data[1_900:]))
    assert max(times) < 5  # answered while training was held (a blocked search would wait 30 s)
    assert g.store.params["type"] == "ivf_flat" and g.store.count() == 2_500
    assert g.verify()["ok"]
    # a reader in another instance adopts the rebuilt index rather than replaying onto its own
    reader = Gallery.open(tmp_path / "g")
    assert reader.store.params["type"] == "ivf_flat" and reader.store.count() == 2_500


def test_searches_go_on_while_a_checkpoint_is_written(tmp_path, openclip_fnd, monkeypatch):
    dim = openclip_fnd.embed_dim
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    data = make_data(500, dim, seed=4)
    g.add_vectors([f"a{i}" for i in range(400)], data[:400])
    g.add_vectors([f"b{i}" for i in range(100)], data[400:])
    gate = _Gate()
    monkeypatch.setattr(FaissStore, "persist", gate.wrap(FaissStore.persist))
    times = _search_while(g, gate, data[450:451], g.checkpoint)
    assert max(times) < 5
    assert _index_json(g)["count"] == 500


def test_a_reader_behind_the_trimmed_log_reloads_the_index(tmp_path, openclip_fnd):
    dim = openclip_fnd.embed_dim
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    data = make_data(90, dim, seed=6)
    g.add_vectors([f"a{i}" for i in range(30)], data[:30])
    g.checkpoint()
    reader = Gallery.open(tmp_path / "g")  # at the first checkpoint
    for part in (1, 2):  # two more checkpoints: the log now starts after the reader's generation
        g.add_vectors([f"p{part}-{i}" for i in range(30)], data[30 * part : 30 * (part + 1)])
        g.checkpoint()
    floor = g.db().execute("SELECT value FROM state WHERE key='log_floor'").fetchone()[0]
    assert reader.store.generation < floor
    hits = reader.search(data[89:90], 1)[0]
    assert hits[0].path == "p2-29" and reader.store.count() == 90 and reader.verify()["ok"]


@pytest.mark.parametrize("rounds", [3])
def test_interleaved_writers_and_readers_agree_with_the_database(tmp_path, openclip_fnd, rounds):
    """Two instances take turns writing (checkpoints, rebuilds and all); each one's searches see
    every item the other committed."""
    dim = openclip_fnd.embed_dim
    a = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    b = Gallery.open(tmp_path / "g")
    data = make_data(60 * rounds, dim, seed=8)
    for r in range(rounds):
        for who, g in (("a", a), ("b", b)):
            chunk = data[60 * r + (0 if who == "a" else 30) :][:30]
            g.add_vectors([f"{who}{r}-{i}" for i in range(30)], chunk)
            if r % 2:
                g.checkpoint()
        for g in (a, b):
            assert g.search(data[60 * r + 59 : 60 * r + 60], 1)[0][0].path == f"b{r}-29"
    for g in (a, b):
        assert g.verify()["ok"]


def test_a_reader_that_kept_up_adopts_the_writers_new_index_family(tmp_path, openclip_fnd, monkeypatch):
    """A reader replaying every batch is never behind the persisted generation, yet must take the
    writer's rebuilt IVF index rather than keep growing its own flat one."""
    dim = openclip_fnd.embed_dim
    monkeypatch.setattr(stores_module, "EXACT_LIMIT", 1_000)
    writer = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    data = make_data(1_400, dim, seed=12)
    writer.add_vectors([f"a{i}" for i in range(900)], data[:900])
    reader = Gallery.open(tmp_path / "g")
    for b in range(900, 1_400, 100):
        writer.add_vectors([f"a{i}" for i in range(b, b + 100)], data[b : b + 100])
        reader.search(data[b : b + 1], 1)  # keeps up batch by batch
    assert writer.store.params["type"] == "ivf_flat"
    hit = reader.search(data[1_399:1_400], 1)[0][0]
    assert reader.store.params["type"] == "ivf_flat" and hit.path == "a1399"
    assert reader.store.params["built_for"] == writer.store.params["built_for"] and reader.verify()["ok"]
