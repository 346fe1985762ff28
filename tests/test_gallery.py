"""Gallery indexing, stores, crash safety and search on tiny models."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isacir.errors import FoundationMismatchError
from isacir.gallery import FaissStore, Gallery, choose_index
from isacir.gallery.stores import build_faiss_index, recall_at_k, tune_nprobe
from isacir.search import Retriever

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def make_folder(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((40, 40)).save(folder / f"img{i:03d}.png")
    return folder


def snapshot(g: Gallery):
    items = [(it["id"], it["path"], it["hash"]) for it in g.items()]
    ids, vecs = g.vectors()
    return items, ids, vecs


def test_index_and_search_match_brute_force(tmp_path, openclip_fnd):
    folder = make_folder(tmp_path / "imgs", 30)
    g = Gallery.open_or_create(tmp_path / "gal", openclip_fnd)
    report = g.index([folder], openclip_fnd, progress=False)
    assert report.added == 30 and g.count() == 30 and g.store.count() == 30
    ids, vecs = g.vectors()
    with torch.no_grad():
        direct = openclip_fnd.encode_image(openclip_fnd.preprocess_batch(sorted(folder.iterdir()))).numpy()
    # vectors are the foundation's own normalised image features
    by_path = {it["path"]: it["id"] for it in g.items()}
    order = [by_path[str(p)] for p in sorted(folder.iterdir())]
    _, ordered = g.vectors(order)
    assert np.allclose(ordered, direct, atol=1e-5)
    queries = np.random.default_rng(1).normal(size=(5, vecs.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results = g.search(queries, k=7)
    for q, hits in zip(queries, results, strict=True):
        scores = vecs @ q
        expected = ids[np.argsort(-scores)[:7]]
        assert [h.id for h in hits] == expected.tolist()
        assert np.allclose([h.score for h in hits], np.sort(scores)[::-1][:7], atol=1e-5)


def test_incremental_reindex(tmp_path, openclip_fnd):
    folder = make_folder(tmp_path / "imgs", 12)
    g = Gallery.open_or_create(tmp_path / "gal", openclip_fnd)
    g.index([folder], openclip_fnd, progress=False)
    first = snapshot(g)
    again = g.index([folder], openclip_fnd, progress=False)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 12)
    # touched but identical content: hashed, recognised, not re-embedded
    os.utime(folder / "img000.png", ns=(1, 1))
    touched = g.index([folder], openclip_fnd, progress=False)
    assert (touched.updated, touched.unchanged) == (0, 12)
    # changed content is re-embedded under the same id
    Image.new("RGB", (40, 40), (255, 0, 0)).save(folder / "img001.png")
    changed = g.index([folder], openclip_fnd, progress=False)
    assert (changed.added, changed.updated) == (0, 1)
    after = snapshot(g)
    assert [i[0] for i in after[0]] == [i[0] for i in first[0]]
    row = [k for k, it in enumerate(after[0]) if it[1].endswith("img001.png")][0]
    assert not np.allclose(after[2][row], first[2][row])
    # deleted files stay unless --prune
    (folder / "img002.png").unlink()
    (folder / "new.png").write_bytes((folder / "img003.png").read_bytes())
    kept = g.index([folder], openclip_fnd, progress=False)
    assert kept.removed == 0 and kept.added == 1 and g.count() == 13
    pruned = g.index([folder], openclip_fnd, prune=True, progress=False)
    assert pruned.removed == 1 and g.count() == 12 and g.store.count() == 12
    assert not any(it["path"].endswith("img002.png") for it in g.items())
    # explicit removal by id
    victim = g.items()[0]["id"]
    assert g.remove([victim, 12345]) == 1 and g.count() == 11 and g.store.count() == 11
    assert all(h.id != victim for h in g.search(g.vectors()[1][:1], k=11)[0])


def _bad_and_odd(folder: Path) -> tuple[dict, int]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("L", (8200, 8200)).save(folder / "bomb.png")
    Image.new("CMYK", (30, 30), (0, 200, 0, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(folder / "sixteen.png")
    Image.new("RGBA", (30, 30), (0, 0, 255, 100)).save(folder / "alpha.png")
    Image.new("P", (30, 30), 3).save(folder / "palette.gif")
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    (folder / "notes.txt").write_text("not an image")
    (folder / "vector.svg").write_text("<svg/>")
    return {"empty": 1, "truncated": 1, "corrupt": 1, "too_large": 1}, 5


def test_bad_file_summary(tmp_path, openclip_fnd):
    expected, good = _bad_and_odd(tmp_path / "imgs")
    g = Gallery.open_or_create(tmp_path / "gal", openclip_fnd)
    report = g.index([tmp_path / "imgs"], openclip_fnd, progress=False)
    assert {k: len(v) for k, v in report.skipped.items()} == expected
    assert report.added == good and len(report.ignored) == 2
    assert any("bomb.png" in m for m in report.skipped["too_large"])
    assert "4 skipped" in report.summary()


def test_foundation_mismatch_is_refused(tmp_path, openclip_fnd, blip_fnd):
    folder = make_folder(tmp_path / "imgs", 3)
    Gallery.open_or_create(tmp_path / "gal", openclip_fnd).index([folder], openclip_fnd, progress=False)
    with pytest.raises(FoundationMismatchError, match="refusing"):
        Gallery.open_or_create(tmp_path / "gal", blip_fnd)
    g = Gallery.open(tmp_path / "gal")
    with pytest.raises(FoundationMismatchError):
        g.index([folder], blip_fnd, progress=False)
    with pytest.raises(FoundationMismatchError):
        Retriever(g, blip_fnd)


SLOW_INDEX = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
from isacir.foundation import create_foundation
from isacir.gallery import Gallery
fnd = create_foundation(sys.argv[1])
if sys.argv[4] == "slow":
    orig = fnd._image_forward
    def slow(pixels, local):
        time.sleep(0.4)
        return orig(pixels, local)
    fnd._image_forward = slow
g = Gallery.open_or_create(sys.argv[3], fnd)
g.index([sys.argv[2]], fnd, batch_size=4, progress=False)
print("done")
"""


def test_sigkill_mid_index_then_rerun_equals_clean_run(tmp_path, tiny_openclip_dir, openclip_fnd):
    folder = make_folder(tmp_path / "imgs", 40)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_INDEX, tiny_openclip_dir[0], str(folder), str(killed), "slow"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    import sqlite3

    deadline = time.time() + 120
    n = 0
    while time.time() < deadline:
        try:
            with sqlite3.connect(killed / "meta.sqlite", timeout=1) as c:
                n = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        except Exception:
            n = 0
        if n >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 8 <= n < 40
    rerun = subprocess.run(
        [sys.executable, "-c", SLOW_INDEX, tiny_openclip_dir[0], str(folder), str(killed), "fast"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean = tmp_path / "clean"
    subprocess.run(
        [sys.executable, "-c", SLOW_INDEX, tiny_openclip_dir[0], str(folder), str(clean), "fast"],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    a, b = Gallery.open(killed), Gallery.open(clean)
    sa, sb = snapshot(a), snapshot(b)
    assert sa[0] == sb[0] and len(sa[0]) == 40  # same ids, paths, hashes; no duplicates
    assert np.array_equal(sa[1], sb[1]) and np.allclose(sa[2], sb[2], atol=1e-6)
    assert a.store.count() == b.store.count() == 40
    q = sb[2][:3]
    assert [[h.id for h in r] for r in a.search(q, 5)] == [[h.id for h in r] for r in b.search(q, 5)]


def test_store_replays_change_log_after_crash(tmp_path, openclip_fnd):
    """Rows committed to SQLite but not yet in the index (crash in between) appear after reopening."""
    folder = make_folder(tmp_path / "imgs", 10)
    g = Gallery.open_or_create(tmp_path / "gal", openclip_fnd)
    g.index([folder], openclip_fnd, progress=False)
    ids, vecs = g.vectors()
    g._commit_batch([(42, "/virtual.png", "h", 1, 1, 0.0, "{}")], vecs[:1])  # committed, store not synced
    assert g.store.count() == 10
    reopened = Gallery.open(tmp_path / "gal")
    assert reopened.store.count() == 11 and reopened.search(vecs[:1], 2)[0][0].id in (42, ids[0])


def test_milvus_lite_matches_faiss_exact(tmp_path, openclip_fnd):
    folder = make_folder(tmp_path / "imgs", 25)
    f = Gallery.open_or_create(tmp_path / "faiss", openclip_fnd)
    f.index([folder], openclip_fnd, progress=False)
    m = Gallery.open_or_create(tmp_path / "milvus", openclip_fnd, store="milvus://./gallery.db")
    m.index([folder], openclip_fnd, progress=False)
    assert m.store.count() == 25
    assert (tmp_path / "milvus" / "gallery.db").exists()  # relative Lite files live in the gallery folder
    q = f.vectors()[1][:4] + 0.01
    for hf, hm in zip(f.search(q, 5), m.search(q, 5), strict=True):
        assert [h.id for h in hf] == [h.id for h in hm]
        assert np.allclose([h.score for h in hf], [h.score for h in hm], atol=1e-4)
    m.remove([f.items()[0]["id"]])
    assert m.store.count() == 24
    m.close()
    reopened = Gallery.open(tmp_path / "milvus")  # collection comes back released; store loads it
    assert reopened.store.count() == 24 and len(reopened.search(q, 3)[0]) == 3
    reopened.close()


def test_ray_path_gives_same_vectors(tmp_path, tiny_openclip_dir, openclip_fnd):
    pytest.importorskip("ray")
    from isacir.gallery.distributed import ray_encoder

    folder = make_folder(tmp_path / "imgs", 12)
    local = Gallery.open_or_create(tmp_path / "local", openclip_fnd)
    local.index([folder], openclip_fnd, progress=False)
    dist = Gallery.open_or_create(tmp_path / "ray", openclip_fnd)
    report = dist.index(
        [folder], openclip_fnd, progress=False, encoder=ray_encoder(tiny_openclip_dir[0], actors=2, batch_size=4)
    )
    import ray

    ray.shutdown()
    assert report.added == 12
    a, b = snapshot(local), snapshot(dist)
    assert a[0] == b[0] and np.allclose(a[2], b[2], atol=1e-5)


def test_ivf_index_by_size_and_tuned_recall():
    assert choose_index(1000, 64)["type"] == "flat"
    params = choose_index(60_000, 32)
    assert params["type"] == "ivf_flat" and params["nlist"] == 1024
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(600, 32))
    vecs = centres[rng.integers(0, 600, 60_000)] + 0.3 * rng.normal(size=(60_000, 32))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(60_000, dtype=np.int64) * 7
    index = build_faiss_index(vecs, ids, params)
    nprobe, recall = tune_nprobe(index, vecs, ids, target=0.95)
    assert recall >= 0.95 and nprobe < params["nlist"]
    # removals work on IVF (needed for incremental galleries)
    index.remove_ids(ids[:10])
    assert index.ntotal == 60_000 - 10
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), 3) == pytest.approx(2 / 3)


def test_faiss_store_rebuilds_when_gallery_outgrows_flat(tmp_path):
    store = FaissStore(tmp_path, 16)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(100, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.apply(np.arange(100), vecs, np.zeros(0, np.int64), generation=1)
    assert not store.needs_rebuild(100) and store.needs_rebuild(60_000)
    reopened = FaissStore(tmp_path, 16)
    assert reopened.count() == 100 and reopened.generation == 1
    _, ids = reopened.search(vecs[:2], 1)
    assert ids[:, 0].tolist() == [0, 1]


def test_retriever_modes_and_rerank(tmp_path, openclip_fnd, blip_fnd):
    from isacir.query import QueryEncoder

    folder = make_folder(tmp_path / "imgs", 15)
    for fnd in (openclip_fnd, blip_fnd):
        g = Gallery.open_or_create(tmp_path / f"gal-{fnd.family}", fnd)
        g.index([folder], fnd, progress=False)
        qe = QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48)
        r = Retriever(g, fnd, qe)
        ref = folder / "img003.png"
        hits = r.search(image=ref, text="is red", k=5)
        assert len(hits) == 5 and all(hits[i].score >= hits[i + 1].score for i in range(4))
        reranked = r.search(image=ref, text="is red", k=5, rerank=10)
        assert len(reranked) == 5 and all(reranked[i].score >= reranked[i + 1].score for i in range(4))
        if fnd.has_matching_head:  # ITM log-odds, not cosine similarities
            assert {h.id for h in reranked} <= {h.id for h in r.search(image=ref, text="is red", k=10)}
        img_only = r.search(image=ref, k=1, mode="image_only")
        assert img_only[0].path == str(ref)  # the reference itself is its own nearest image
        tokens = qe.encode_images([ref])
        assert [h.id for h in r.search(tokens=tokens, text="is red", k=5)] == [h.id for h in hits]
        plus = Retriever(g, fnd).search(image=ref, text="is red", k=3)
        assert len(plus) == 3


def test_cli_index_and_search_json(tmp_path, tiny_openclip_dir):
    folder = make_folder(tmp_path / "imgs", 8)
    gal = tmp_path / "gal"

    def run(*args):
        p = subprocess.run(
            [sys.executable, "-m", "isacir.cli", *args], capture_output=True, text=True, env=ENV, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return p

    idx = run(
        "index",
        str(folder),
        "--gallery",
        str(gal),
        "--foundation",
        tiny_openclip_dir[0],
        "--json",
        "--workers",
        "0",
        "--metadata",
        '{"source": "test"}',
    )
    assert json.loads(idx.stdout.strip().splitlines()[-1])["added"] == 8
    res = run(
        "search", "--gallery", str(gal), "--image", str(folder / "img002.png"), "--text", "is red", "-k", "3", "--json"
    )
    hits = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(hits) == 3 and set(hits[0]) == {"id", "path", "score", "metadata"}
    assert hits[0]["metadata"] == {"source": "test"}
    assert "image_plus_text fallback" in res.stderr
    # the reference photo is in the gallery: as in POST /v1/search it is no answer, unless kept
    every = ["search", "--gallery", str(gal), "--image", str(folder / "img002.png"), "--text", "is red", "-k", "8"]
    left_out = json.loads(run(*every, "--json").stdout.strip().splitlines()[-1])
    kept = json.loads(run(*every, "--keep-copies", "--json").stdout.strip().splitlines()[-1])
    reference = str((folder / "img002.png").resolve())
    assert len(left_out) == 7 and reference not in {h["path"] for h in left_out}
    assert len(kept) == 8 and reference in {h["path"] for h in kept}
    victim = str(hits[0]["id"])
    listed = json.loads(run("gallery", "ls", "--gallery", str(gal), "--json").stdout.strip().splitlines()[-1])
    assert len(listed) == 8 and set(listed[0]) == {"id", "path", "hash"} and int(victim) in {x["id"] for x in listed}
    removed = json.loads(run("gallery", "rm", victim, "1", "--gallery", str(gal), "--json").stdout.splitlines()[-1])
    assert removed == {"removed": 1, "ids": [int(victim)], "not_found": [1]}
    info = json.loads(run("gallery", "info", "--gallery", str(gal)).stdout.strip().splitlines()[-1])
    assert info["count"] == 7 and info["foundation_id"] == tiny_openclip_dir[0]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "index",
            str(folder),
            "--gallery",
            str(gal),
            "--foundation",
            "openclip:ViT-S-32",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert bad.returncode == 2 and "refusing" in bad.stderr


def test_concurrent_search_while_indexing(tmp_path, openclip_fnd):
    """Searches from several threads keep answering while another thread adds and removes images."""
    from concurrent.futures import ThreadPoolExecutor

    first = make_folder(tmp_path / "a", 20)
    second = make_folder(tmp_path / "b", 20, seed=5)
    g = Gallery.open_or_create(tmp_path / "gal", openclip_fnd)
    g.index([first], openclip_fnd, progress=False)
    q = g.vectors()[1][:4]
    stop = time.time() + 60
    errors: list[BaseException] = []

    def searcher():
        n = 0
        while time.time() < stop and n < 200:
            try:
                for hits in g.search(q, 5):
                    assert len(hits) >= 1 and all(h.path for h in hits)
            except BaseException as exc:  # noqa: BLE001 - collect for the assertion below
                errors.append(exc)
                return n
            n += 1
        return n

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(searcher) for _ in range(2)]
        g.index([first, second], openclip_fnd, batch_size=4, progress=False)
        g.remove([it["id"] for it in g.items()[:5]])
        counts = [f.result() for f in futures]
    assert not errors, errors[:1]
    assert all(c > 0 for c in counts)
    assert g.count() == 35 and g.store.count() == 35


@pytest.mark.bench
def test_bench_search_cli_reports_required_fields():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "bench",
            "search",
            "--n",
            "3000",
            "--dim",
            "32",
            "--n-queries",
            "50",
            "--milvus-n",
            "500",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for backend in (res, res["milvus"]):
        for key in ("ann_p50_ms", "ann_p99_ms", "exact_p50_ms", "recall_at_10", "build_s"):
            assert key in backend
    assert res["recall_at_10"] == 1.0 and res["index"]["type"] == "flat"  # 3000 < exact limit
    assert res["milvus"]["recall_at_10"] == 1.0


def test_verify_passes_a_healthy_gallery_and_names_each_kind_of_damage(tmp_path, openclip_fnd):
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    folder = make_folder(tmp_path / "imgs", 12, seed=3)
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    g.index([str(folder)], openclip_fnd, progress=False)
    report = g.verify()
    assert report["ok"] and report["items"] == report["store_items"] == 12 and report["self_retrieval_lost"] == 0
    ok = CliRunner().invoke(cli, ["gallery", "verify", str(tmp_path / "g"), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout.strip().splitlines()[-1])["ok"]

    victim = int(g.ids()[4])
    g.store.index.remove_ids(np.array([victim], dtype=np.int64))  # the store lost an item it acknowledged
    g.store._persist()
    report = g.verify()
    assert not report["ok"] and report["self_retrieval_lost"] == 1
    assert report["missing"] == [victim] and report["extra"] == []
    assert any("11 vectors for 12 items" in p for p in report["problems"])
    bad = CliRunner().invoke(cli, ["gallery", "verify", str(tmp_path / "g")])
    assert bad.exit_code == 1  # a fresh open replays nothing (same generation), so the loss shows
    g.store.rebuild(*g.vectors(), g.generation())
    assert g.verify()["ok"]

    with g.db() as db:
        db.execute("DELETE FROM vectors WHERE id = ?", (victim,))
    report = g.verify()
    assert any("1 item(s) without a vector" in p for p in report["problems"])
    g.store.index.add_with_ids(np.ones((1, g.info["embed_dim"]), np.float32), np.array([10**9], dtype=np.int64))
    report = g.verify()
    assert 10**9 in report["extra"] and any("1 vector(s) in the store for no item" in p for p in report["problems"])
    (folder / "img000.png").unlink()
    assert any("gone from disk" in w for w in g.verify()["warnings"])


def test_paths_are_canonical_and_another_spelling_is_a_no_op(tmp_path, openclip_fnd, monkeypatch):
    folder = make_folder(tmp_path / "data" / "imgs", 5, seed=4)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    first = g.index(["imgs"], openclip_fnd, progress=False)  # relative, as a user types it
    assert first.added == 5
    assert {it["path"] for it in g.items()} == {str(p.resolve()) for p in folder.iterdir()}
    for spelling in ("./imgs/../imgs", str(tmp_path / "link" / "imgs"), str(folder)):
        again = g.index([spelling], openclip_fnd, progress=False)
        assert (again.added, again.unchanged) == (0, 5), spelling
    monkeypatch.chdir(tmp_path)  # served from elsewhere: every stored path still opens
    assert all(Path(it["path"]).is_file() for it in g.items())


def test_an_old_gallery_with_relative_paths_is_migrated_on_open(tmp_path, openclip_fnd, monkeypatch):
    folder = make_folder(tmp_path / "imgs", 3, seed=5)
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    g.index([str(folder)], openclip_fnd, progress=False)
    before = {it["id"]: it["path"] for it in g.items()}
    with g.db() as db:  # what an older isacir stored when indexing `imgs` from tmp_path
        db.executemany(
            "UPDATE items SET path = ? WHERE id = ?", [(f"imgs/{Path(p).name}", i) for i, p in before.items()]
        )
        db.execute("DELETE FROM state WHERE key = 'paths_canonical'")  # an older isacir never set it
    g.close()
    other = tmp_path / "elsewhere" / "imgs"
    make_folder(other, 3, seed=99)  # same names, other pictures
    monkeypatch.chdir(tmp_path / "elsewhere")
    g = Gallery.open(tmp_path / "g")
    assert all(not it["path"].startswith("/") for it in g.items())  # not rewritten to the wrong files
    g.close()
    monkeypatch.chdir(tmp_path)
    g = Gallery.open(tmp_path / "g")
    assert {it["id"]: it["path"] for it in g.items()} == before  # same ids, canonical paths
    assert g.index([str(folder)], openclip_fnd, progress=False).unchanged == 3
    # migrated once: later opens do not scan the items again
    assert g.db().execute("SELECT value FROM state WHERE key = 'paths_canonical'").fetchone() == (1,)


def test_removed_items_stay_removed_on_reindex_until_restored(tmp_path, openclip_fnd):
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    folder = make_folder(tmp_path / "imgs", 6, seed=6)
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    g.index([str(folder)], openclip_fnd, progress=False)
    victims = sorted(g.ids().tolist())[:2]
    assert g.remove(victims) == 2
    again = g.index([str(folder)], openclip_fnd, progress=False)
    assert (again.added, again.tombstoned) == (0, 2) and g.count() == 4
    assert sorted(t["id"] for t in g.tombstones()) == victims
    # a file that disappears is pruned without a tombstone: when it comes back, it is indexed again
    gone = Path(g.items()[0]["path"])  # one that is still indexed
    data = gone.read_bytes()
    gone.unlink()
    assert g.index([str(folder)], openclip_fnd, prune=True, progress=False).removed == 1
    gone.write_bytes(data)
    assert g.index([str(folder)], openclip_fnd, progress=False).added == 1
    # restoring one id by the CLI, then the rest with --restore
    r = CliRunner().invoke(cli, ["gallery", "restore", str(victims[0]), "--gallery", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    g2 = Gallery.open(tmp_path / "g")
    assert g2.index([str(folder)], openclip_fnd, progress=False).added == 1
    back = g2.index([str(folder)], openclip_fnd, progress=False, restore=True)
    assert (back.restored, back.added, g2.count()) == (1, 1, 6) and g2.tombstones() == []
    with pytest.raises(Exception, match="no removed item 12345"):
        g2.restore([12345])


def test_a_second_writer_waits_or_fails_with_no_wait(tmp_path, openclip_fnd):
    import fcntl

    make_folder(tmp_path / "imgs", 2, seed=7)
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    with open(tmp_path / "g" / ".write.lock", "a+") as other:  # another process holds the writer lock
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("pid 4242 (isacir index)")
        other.flush()
        g.wait_for_writer = False
        with pytest.raises(Exception, match="being changed by pid 4242"):
            g.index([str(tmp_path / "imgs")], openclip_fnd, progress=False)
        fcntl.flock(other, fcntl.LOCK_UN)
    g.wait_for_writer = True
    assert g.index([str(tmp_path / "imgs")], openclip_fnd, progress=False).added == 2


def test_rerank_rescores_the_top_n_and_says_which_reranker_ran(tmp_path, openclip_fnd, blip_fnd):
    from isacir.query import QueryEncoder

    folder = make_folder(tmp_path / "imgs", 15, seed=8)
    ref = folder / "img002.png"
    # an exact store: re-scoring would repeat its scores, so nothing runs and nothing changes
    g = Gallery.open_or_create(tmp_path / "gal-clip", openclip_fnd)
    g.index([folder], openclip_fnd, progress=False)
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48)
    r = Retriever(g, openclip_fnd, qe)
    assert g.store_is_exact and r.reranker(True) == "none"
    plain = r.search(image=ref, text="is red", k=5)
    assert [(h.id, h.score) for h in r.search(image=ref, text="is red", k=5, rerank=10)] == [
        (h.id, h.score) for h in plain
    ]
    # an approximate store: the top N are re-scored exactly from the stored vectors, the rest keep their place
    g.store.params = {"type": "ivf_flat", "nlist": 4, "nprobe": 1, "train_size": 15}
    ids, vecs = g.vectors()
    g.store.index = build_faiss_index(vecs, ids, g.store.params)
    assert not g.store_is_exact and r.reranker(True) == "exact" and r.reranker(False) == "exact"
    query, _ = r.query_vector(image=ref, text="is red")
    base = r.gallery.search(query[None], 8)[0]
    got = r.search_vector(query, k=8, rerank=4)
    _, top_vecs = g.vectors([h.id for h in base[:4]])
    oracle = [base[i].id for i in np.argsort(-(top_vecs @ query), kind="stable")]
    assert [h.id for h in got[:4]] == oracle and [h.id for h in got[4:]] == [h.id for h in base[4:8]]
    # BLIP: the matching head re-scores the top N; the order equals match_score computed here
    gb = Gallery.open_or_create(tmp_path / "gal-blip", blip_fnd)
    gb.index([folder], blip_fnd, progress=False)
    qb = QueryEncoder.create(blip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48)
    rb = Retriever(gb, blip_fnd, qb)
    assert rb.reranker(True) == "itm" and rb.reranker(False) == "none"
    tokens = qb.encode_images([ref])
    query, _ = rb.query_vector(text="is red", tokens=tokens)
    base = gb.search(query[None], 6)[0]
    got = rb.search_vector(query, k=6, rerank=3, tokens=tokens, text="is red")
    hidden = blip_fnd.encode_image_features(blip_fnd.preprocess_batch([Image.open(h.path) for h in base[:3]])).hidden
    with torch.no_grad():
        scores = blip_fnd.match_score(
            hidden, pseudo_tokens=tokens.expand(3, -1, -1), modifiers=[["is red"]] * 3, template=rb.template
        )
    oracle = [base[i].id for i in np.argsort(-scores.float().numpy(), kind="stable")]
    assert [h.id for h in got[:3]] == oracle and [h.id for h in got[3:]] == [h.id for h in base[3:6]]


def test_index_metadata_from_jsonl_per_path_and_updated_without_reembedding(tmp_path, tiny_openclip_dir):
    from typer.testing import CliRunner

    from isacir.cli import app as cli
    from isacir.errors import IsacirError

    folder = make_folder(tmp_path / "shop" / "imgs", 3, seed=9)
    meta = tmp_path / "shop" / "catalogue.jsonl"
    meta.write_text(
        json.dumps({"path": "imgs/img000.png", "title": "Red dress", "sku": "D-1"})
        + "\n\n"
        + json.dumps({"path": str(folder / "img001.png"), "title": "Blue shirt"})
        + "\n"
    )
    args = ["index", str(folder), "--gallery", str(tmp_path / "g"), "--foundation", tiny_openclip_dir[0]]
    r = CliRunner().invoke(cli, [*args, "--metadata", str(meta), "--no-progress"])
    assert r.exit_code == 0, r.output
    g = Gallery.open(tmp_path / "g")
    by_name = {Path(it["path"]).name: it["metadata"] for it in g.items()}
    assert by_name == {
        "img000.png": {"title": "Red dress", "sku": "D-1"},
        "img001.png": {"title": "Blue shirt"},
        "img002.png": {},
    }
    hits = g.search(g.vectors()[1][:1], k=3)[0]
    assert {h.path: h.metadata for h in hits}[g.items()[0]["path"]] == g.items()[0]["metadata"]
    meta.write_text(json.dumps({"path": "imgs/img002.png", "title": "Green hat"}) + "\n")
    r = CliRunner().invoke(cli, [*args, "--metadata", str(meta), "--no-progress", "--json"])
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["unchanged"] == 3 and report["added"] == 0  # nothing re-embedded
    assert {Path(it["path"]).name: it["metadata"] for it in Gallery.open(tmp_path / "g").items()}["img002.png"] == {
        "title": "Green hat"
    }
    meta.write_text('{"title": "no path"}\n')
    bad = CliRunner().invoke(cli, [*args, "--metadata", str(meta)])
    assert isinstance(
        bad.exception, IsacirError
    ) and 'catalogue.jsonl:1: each line must be a JSON object with a "path"' in str(bad.exception)
