"""Index families (flat, IVF-Flat, IVF-SQ8, IVF-PQ), exact re-ranking over a compressed index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isacir.bench.search import make_data, make_queries
from isacir.gallery import Gallery, GalleryError
from isacir.gallery.stores import StoreError, choose_index, recall_at_k, resolve_index_kind
from isacir.search import Retriever


def _gallery(tmp_path, fnd, n: int, index: str, name: str = "g", seed: int = 0):
    data = make_data(n, fnd.embed_dim, seed=seed)
    g = Gallery.open_or_create(tmp_path / name, fnd, index=index)
    ids = np.array(g.add_vectors([f"item-{i}" for i in range(n)], data), dtype=np.int64)
    return g, ids, data


def _truth(queries: np.ndarray, data: np.ndarray, ids: np.ndarray, k: int = 10) -> np.ndarray:
    """Brute-force top-k ids: the oracle that every index is measured against."""
    return ids[np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]]


def test_auto_choice_follows_the_memory_that_fp32_vectors_would_take():
    assert resolve_index_kind(10_000, 768) == "flat"
    assert resolve_index_kind(1_000_000, 768) == "ivf_flat"  # 2.9 GiB of fp32
    assert resolve_index_kind(5_000_000, 768) == "ivf_sq8"  # 14.3 GiB
    assert resolve_index_kind(20_000_000, 768) == "ivf_pq"  # 57 GiB
    # a forced family on too few vectors to train a quantizer stays exact
    assert resolve_index_kind(500, 768, "ivf_pq") == "flat"
    assert resolve_index_kind(5_000, 768, "ivf_pq") == "ivf_pq"
    params = choose_index(5_000, 768, "ivf_pq")
    assert params["m"] == 96 and 768 % params["m"] == 0 and params["nbits"] == 8
    assert params["nlist"] * 39 <= 5_000  # enough points per list for k-means
    with pytest.raises(StoreError, match="unknown index 'hnsw'"):
        resolve_index_kind(10, 8, "hnsw")


@pytest.mark.parametrize("kind", ["ivf_sq8", "ivf_pq"])
def test_compressed_index_is_smaller_and_exact_reranking_restores_recall(tmp_path, openclip_fnd, kind):
    dim = openclip_fnd.embed_dim
    g, ids, data = _gallery(tmp_path, openclip_fnd, 3_000, kind)
    state = g.store.describe()
    assert state["type"] == kind and state["count"] == 3_000
    # fp32 costs 4 bytes a dimension; SQ8 one byte, PQ one byte per sub-vector. Beyond the codes: the
    # id, the id -> position map that makes updates cheap, list slack (less than fp32 would add)
    codes = dim if kind == "ivf_sq8" else state["m"]
    assert 0 < state["bytes_per_vector"] - codes < min(64, 3 * dim)
    retriever = Retriever(g, openclip_fnd, None)
    assert retriever.reranker(has_tokens=False) == "exact"
    queries = make_queries(data, 100, seed=3)
    truth = _truth(queries, data, ids)
    plain = np.array([[h.id for h in retriever.search_vector(q, k=10)] for q in queries])
    reranked_hits = [retriever.search_vector(q, k=10, rerank=100) for q in queries]
    reranked = np.array([[h.id for h in row] for row in reranked_hits])
    r_plain, r_rerank = recall_at_k(plain, truth, 10), recall_at_k(reranked, truth, 10)
    assert r_rerank >= 0.95 and r_rerank > r_plain
    # the re-ranked scores are the exact inner products, in order
    row = reranked_hits[0]
    exact = {int(i): float(v) for i, v in zip(ids, data @ queries[0], strict=True)}
    assert [h.score for h in row] == pytest.approx([exact[h.id] for h in row], abs=1e-5)
    assert all(a.score >= b.score for a, b in zip(row, row[1:], strict=False))
    assert g.verify()["ok"]


def test_index_family_is_remembered_and_switching_rebuilds(tmp_path, openclip_fnd):
    g, ids, data = _gallery(tmp_path, openclip_fnd, 2_000, "auto")
    assert g.store.describe()["type"] == "flat" and g.store_is_exact
    report = g.set_index_kind("ivf_sq8")
    assert report is not None and report["store"]["type"] == "ivf_sq8" and not g.store_is_exact
    g.close()
    reopened = Gallery.open(tmp_path / "g")
    assert reopened.info["index"] == "ivf_sq8" and reopened.store.describe()["type"] == "ivf_sq8"
    # more items keep the family; the item's own vector still finds it
    more = make_data(50, openclip_fnd.embed_dim, seed=9)
    new_ids = reopened.add_vectors([f"more-{i}" for i in range(50)], more)
    assert reopened.store.describe()["type"] == "ivf_sq8" and reopened.store.count() == 2_050
    assert reopened.search(more[:1], 1)[0][0].id == new_ids[0]
    assert reopened.verify()["ok"]
    with pytest.raises(StoreError, match="unknown index"):
        reopened.set_index_kind("ivf_hnsw")


def test_add_vectors_rejects_bad_input(tmp_path, openclip_fnd):
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd)
    dim = openclip_fnd.embed_dim
    with pytest.raises(GalleryError, match="expected 2 vectors of dim"):
        g.add_vectors(["a", "b"], np.ones((2, dim + 1), np.float32))
    with pytest.raises(GalleryError, match="L2-normalised"):
        g.add_vectors(["a"], np.ones((1, dim), np.float32))
    with pytest.raises(GalleryError, match="unique"):
        v = make_data(2, dim)
        g.add_vectors(["a", "a"], v)
    assert g.count() == 0


def test_cli_index_flag_rejects_an_unknown_family(tmp_path, tiny_openclip_dir):
    from PIL import Image
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / "red.png")
    base = ["index", str(folder), "--gallery", str(tmp_path / "g"), "--foundation", tiny_openclip_dir[0]]
    bad = CliRunner().invoke(cli, [*base, "--index", "hnsw", "--no-progress"])
    assert bad.exit_code != 0 and "unknown index 'hnsw'" in str(bad.exception)
    assert not (tmp_path / "g" / "gallery.json").exists()
    good = CliRunner().invoke(cli, [*base, "--index", "ivf_pq", "--no-progress"])
    assert good.exit_code == 0, good.output
    assert json.loads((tmp_path / "g" / "gallery.json").read_text())["index"] == "ivf_pq"
    rebuilt = CliRunner().invoke(cli, ["gallery", "rebuild-index", str(tmp_path / "g"), "--index", "flat"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout.strip().splitlines()[-1])["store"]["requested"] == "flat"


def test_nprobe_is_tuned_on_the_real_queries_the_gallery_gets(tmp_path, openclip_fnd, monkeypatch):
    """Composed, text-side queries sit far from every stored vector; tuned on them, the IVF index
    reaches its recall target on them (checked against brute force)."""
    import faiss

    from isacir.gallery.stores import faiss_store as stores

    monkeypatch.setattr(stores, "EXACT_LIMIT", 1_000)
    g, ids, data = _gallery(tmp_path, openclip_fnd, 6_000, "auto")
    assert g.store.params["type"] == "ivf_flat" and g.store.params["tuned_on"] == "stored vectors + noise"
    gap = make_queries(data, 1_600, seed=5, kind="gap")
    for q in gap[:1_500]:
        g.note_query(q)
    kept = g.tuning_queries()
    assert len(kept) == g.TUNING_QUERIES  # a reservoir: bounded, whatever the traffic
    assert {tuple(np.round(r, 5)) for r in kept} <= {tuple(np.round(r, 5)) for r in gap[:1_500]}
    params = g.retune()
    assert params["tuned_on"] == "200 logged queries"
    held_out = gap[1_500:]
    ivf = faiss.extract_index_ivf(g.store.index)
    assert ivf.nprobe == params["nprobe"]
    _, got = g.store.index.search(held_out, 10)
    recall = recall_at_k(got, _truth(held_out, data, ids), 10)
    assert recall >= min(0.95, params["tuned_recall_at_10"] - 0.03)
    g.close()  # saves the kept queries
    reopened = Gallery.open(tmp_path / "g")
    assert len(reopened.tuning_queries()) == g.TUNING_QUERIES
    assert reopened.store.params["nprobe"] == params["nprobe"]  # the retuned index was persisted


def test_the_tuner_keeps_probing_while_recall_climbs_slowly():
    """On structureless data each extra list adds a little recall: the tuner must not take that
    for a plateau (only compressed codes plateau), and ends at a full scan if need be."""
    import faiss

    from isacir.gallery.stores import build_faiss_index, tune_nprobe

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((20_000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(20_000, dtype=np.int64)
    params = choose_index(20_000, 32, "ivf_flat")
    index = build_faiss_index(vecs, ids, params)
    nprobe, recall = tune_nprobe(index, vecs, ids, target=0.97)
    assert recall >= 0.97 and nprobe >= 16
    assert faiss.extract_index_ivf(index).nprobe == nprobe
