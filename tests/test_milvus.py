"""The Milvus store against Milvus Lite and a real Milvus standalone server (PyPI ``milvus``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isacir.bench.search import make_data, make_queries
from isacir.gallery import Gallery
from isacir.gallery import gallery as gallery_module
from isacir.gallery.stores import GENERATION_PROPERTY, MilvusStore, StoreError, parse_milvus_uri


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus standalone server on a loopback port for the session (about 10 s to start)."""
    server_mod = pytest.importorskip("milvus", reason="the PyPI milvus server ships for Linux x86-64 only")
    server = server_mod.default_server
    base = tmp_path_factory.mktemp("milvus-server")
    server.set_base_dir(str(base))
    try:
        server.start()
    except TimeoutError:
        # Seen once with another test worker loading both cores: the server never answered its
        # health check in 180 s. Start it once more, and say what it logged if that fails too.
        server.stop()
        try:
            server.start()
        except TimeoutError as exc:
            logs = "".join(f.read_text()[-3000:] for f in sorted((base / "logs").glob("milvus-*.log")))
            raise RuntimeError(f"the Milvus server did not start twice; its logs end with:\n{logs}") from exc
    yield f"127.0.0.1:{server.listen_port}"
    server.stop()


@pytest.fixture(params=["lite", "server"])
def milvus_spec(request, tmp_path):
    """A store spec for each Milvus kind; the server one names a database of its own per test."""
    if request.param == "lite":
        return "milvus://./gallery.db"
    address = request.getfixturevalue("milvus_server")
    return f"milvus://{address}?db=t_{abs(hash(str(tmp_path))) % 10**8}"


def _pair(tmp_path, fnd, spec, n=400, seed=0):
    """The same vectors in a FAISS gallery (exact: the oracle) and a Milvus one."""
    data = make_data(n, fnd.embed_dim, seed=seed)
    metas = [{"colour": ["red", "blue"][i % 2]} for i in range(n)]
    keys = [f"item-{i}" for i in range(n)]
    exact = Gallery.open_or_create(tmp_path / "faiss", fnd)
    exact.add_vectors(keys, data, metas)
    milvus = Gallery.open_or_create(tmp_path / "milvus", fnd, store=spec)
    milvus.add_vectors(keys, data, metas)
    return exact, milvus, data


def test_milvus_matches_exact_faiss_search_and_filters(tmp_path, openclip_fnd, milvus_spec, monkeypatch):
    exact, milvus, data = _pair(tmp_path, openclip_fnd, milvus_spec)
    queries = make_queries(data, 10, seed=4)
    for a, b in zip(exact.search(queries, 5), milvus.search(queries, 5), strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
    monkeypatch.setattr(gallery_module, "FILTER_EXACT_LIMIT", 0)  # through Milvus's own filter
    where = {"colour": "blue"}
    for a, b in zip(exact.search(queries, 5, where=where), milvus.search(queries, 5, where=where), strict=True):
        assert [h.id for h in a] == [h.id for h in b] and all(h.metadata["colour"] == "blue" for h in b)
    assert milvus.verify()["ok"]


def test_generation_lives_in_milvus_and_readers_never_write(tmp_path, openclip_fnd, milvus_spec):
    exact, milvus, data = _pair(tmp_path, openclip_fnd, milvus_spec, n=50)
    store = milvus.store
    assert isinstance(store, MilvusStore) and store.shared
    assert int(store._properties()[GENERATION_PROPERTY]) == milvus.generation()
    assert not (tmp_path / "milvus" / "milvus-generation.json").exists()
    reader = Gallery.open(tmp_path / "milvus")

    def no_writes(*args, **kwargs):
        raise AssertionError("a reader wrote to the shared collection")

    reader.store.apply = no_writes  # type: ignore[method-assign]
    reader.store.rebuild = no_writes  # type: ignore[method-assign]
    new = milvus.add_vectors(["late"], make_data(1, openclip_fnd.embed_dim, seed=9))
    milvus.remove([exact.ids()[0]])
    assert reader.search(make_data(1, openclip_fnd.embed_dim, seed=9), 1)[0][0].id == new[0]
    assert reader.store.generation == milvus.generation() and reader.verify()["ok"]


def test_galleries_share_a_milvus_without_touching_each_other(tmp_path, openclip_fnd, milvus_server):
    spec = f"milvus://{milvus_server}?db=shared_{abs(hash(str(tmp_path))) % 10**8}"
    dim = openclip_fnd.embed_dim
    a = Gallery.open_or_create(tmp_path / "a", openclip_fnd, store=spec)
    b = Gallery.open_or_create(tmp_path / "b", openclip_fnd, store=spec)
    assert a.info["milvus_collection"] != b.info["milvus_collection"]
    a.add_vectors([f"a{i}" for i in range(30)], make_data(30, dim, seed=1))
    b.add_vectors([f"b{i}" for i in range(20)], make_data(20, dim, seed=2))
    a.rebuild_index()  # drops and refills a's collection only
    a.remove(a.ids()[:5].tolist())
    assert (a.store.count(), b.store.count()) == (25, 20)
    assert a.verify()["ok"] and b.verify()["ok"]
    assert json.loads((tmp_path / "b" / "gallery.json").read_text())["store"] == spec


def test_a_legacy_generation_file_is_migrated_into_milvus(tmp_path, openclip_fnd):
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd, store="milvus://./gallery.db")
    g.add_vectors(["x"], make_data(1, openclip_fnd.embed_dim, seed=1))
    gen = g.generation()
    g.store.client.alter_collection_properties(g.store.collection, properties={GENERATION_PROPERTY: ""})
    g.close()
    (tmp_path / "g" / "milvus-generation.json").write_text(json.dumps({"generation": gen}))
    reopened = Gallery.open(tmp_path / "g")
    assert reopened.store.generation == gen and reopened.verify()["ok"]


def test_milvus_uri_forms(tmp_path):
    assert parse_milvus_uri("./gallery.db", tmp_path) == (str((tmp_path / "gallery.db").resolve()), "")
    assert parse_milvus_uri("db.example.com:19530?db=shop", tmp_path) == ("http://db.example.com:19530", "shop")
    assert parse_milvus_uri("https://milvus.example.com:443", tmp_path) == ("https://milvus.example.com:443", "")
    with pytest.raises(StoreError, match=r"unknown Milvus option\(s\) \['user'\]"):
        parse_milvus_uri("host:19530?user=root", tmp_path)


def test_the_token_comes_from_the_environment_and_is_never_stored(tmp_path, openclip_fnd, monkeypatch):
    seen = {}
    import pymilvus

    real = pymilvus.MilvusClient

    def spy(target, **kwargs):
        seen.update(kwargs)
        return real(target, **{k: v for k, v in kwargs.items() if k != "token"})

    monkeypatch.setattr(pymilvus, "MilvusClient", spy)
    monkeypatch.setenv("ISACIR_MILVUS_TOKEN", "root:s3cret")
    g = Gallery.open_or_create(tmp_path / "g", openclip_fnd, store="milvus://./gallery.db")
    assert seen["token"] == "root:s3cret"
    assert "s3cret" not in (tmp_path / "g" / "gallery.json").read_text()
    g.close()


def test_generations_on_a_milvus_server_sit_behind_an_alias(tmp_path, openclip_fnd, milvus_server):
    """Each generation has its own collection; the serving one is named by an alias that moves on promote."""
    from serve_helpers import make_images

    from isacir.foundation import create_foundation
    from isacir.gallery.generations import Generations
    from isacir.testing import save_tiny_openclip

    spec = f"milvus://{milvus_server}?db=gen_{abs(hash(str(tmp_path))) % 10**8}"
    home = tmp_path / "gallery"
    make_images(tmp_path / "images", 6)
    g = Gallery.open_or_create(home, openclip_fnd, store=spec)
    g.index([str(tmp_path / "images")], openclip_fnd, progress=False)
    root_collection = g.info["milvus_collection"]
    g.close()
    gens = Generations(home)
    report = gens.build("g2", create_foundation(save_tiny_openclip(tmp_path / "f2", seed=7)), progress=False)
    assert report["items"] == 6 and report["state"] == "ready"
    alias = gens.milvus_alias()
    assert alias == f"{root_collection}_serving"
    g2 = Gallery.open(home, generation="g2")
    g2_collection = g2.info["milvus_collection"]
    assert g2_collection != root_collection and g2.store.count() == 6
    assert not g2.store.has_alias(alias)  # it names the serving generation's collection
    g2.close()
    main = Gallery.open(home)
    assert main.store.has_alias(alias)
    main.close()
    gens.promote("g2", actor="test")
    g2 = Gallery.open(home)
    assert g2.generation_name == "g2" and g2.store.has_alias(alias)
    g2.close()
    main = Gallery.open(home, generation="main")
    assert not main.store.has_alias(alias)  # moved, not copied
    main.close()
