"""Metadata filters: the top K of the items that pass, on exact and IVF stores, in Python and over HTTP."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import build_service, make_images, start_server

from isacir.bench.search import make_data, make_queries
from isacir.edge.payload import encode_payload
from isacir.gallery import Gallery, GalleryError, check_filter
from isacir.gallery import gallery as gallery_module
from isacir.gallery.stores import recall_at_k

KEY = {"X-API-Key": "test-key"}
COLOURS = ["red", "green", "blue", "black", "white"]


def _meta(i: int) -> dict:
    return {"colour": COLOURS[i % 5], "in_stock": i % 3 != 0, "size": i % 7, "sku": f"S{i:05d}"}


def _brute(queries, data, ids, passing, k):
    """The oracle: exact top-k among the items that pass."""
    mask = np.isin(ids, passing)
    sub_ids, sub = ids[mask], data[mask]
    return [sub_ids[np.argsort(-(sub @ q), kind="stable")[:k]].tolist() for q in queries]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("filters")
    n = 12_000
    data = make_data(n, openclip_fnd.embed_dim, seed=4)
    flat = Gallery.open_or_create(tmp / "flat", openclip_fnd, index="flat")
    ivf = Gallery.open_or_create(tmp / "ivf", openclip_fnd, index="ivf_flat")
    keys = [f"item-{i}" for i in range(n)]
    metas = [_meta(i) for i in range(n)]
    ids = np.array(flat.add_vectors(keys, data, metas), dtype=np.int64)
    assert ivf.add_vectors(keys, data, metas) == ids.tolist()
    assert ivf.store.describe()["type"] == "ivf_flat"
    return flat, ivf, ids, data


def test_filters_select_by_value_list_bool_and_number(filtered):
    flat, _, ids, _ = filtered
    n = len(ids)
    expect = {
        json.dumps({"colour": "red"}): [i for i in range(n) if i % 5 == 0],
        json.dumps({"colour": ["red", "blue"]}): [i for i in range(n) if i % 5 in (0, 2)],
        json.dumps({"in_stock": False}): [i for i in range(n) if i % 3 == 0],
        json.dumps({"colour": "red", "size": 3}): [i for i in range(n) if i % 5 == 0 and i % 7 == 3],
        json.dumps({"sku": "S00042"}): [42],
        json.dumps({"colour": "purple"}): [],
        json.dumps({"no_such_field": 1}): [],
    }
    for where, rows in expect.items():
        assert flat.ids_matching(json.loads(where)).tolist() == sorted(ids[rows].tolist()), where


@pytest.mark.parametrize("where", [{"colour": "red", "size": 3}, {"colour": ["red", "blue"]}, {"in_stock": True}])
def test_filtered_search_is_the_top_k_of_the_passing_items(filtered, where):
    """Few passing items (exact over their vectors) and many (the store restricted to them)."""
    flat, ivf, ids, data = filtered
    passing = flat.ids_matching(where)
    queries = make_queries(data, 40, seed=7)
    truth = _brute(queries, data, ids, passing, 10)
    exact_hits = flat.search(queries, 10, where=where)
    assert [[h.id for h in row] for row in exact_hits] == truth
    ivf_hits = ivf.search(queries, 10, where=where)
    assert all(len(row) == 10 and all(h.id in set(passing.tolist()) for h in row) for row in ivf_hits)
    recall = recall_at_k(np.array([[h.id for h in row] for row in ivf_hits]), np.array(truth), 10)
    assert recall >= (1.0 if len(passing) <= gallery_module.FILTER_EXACT_LIMIT else 0.9)
    assert all(row[0].metadata["colour"] in np.atleast_1d(where.get("colour", COLOURS)) for row in ivf_hits)


def test_a_selective_filter_on_ivf_still_fills_k(filtered, monkeypatch):
    """Forced through the IVF store, 3 passing items sit in lists that nprobe does not reach for
    most queries: the search widens until it has them all."""
    _, ivf, ids, data = filtered
    monkeypatch.setattr(gallery_module, "FILTER_EXACT_LIMIT", 0)
    where = {"sku": ["S00001", "S05002", "S11003"]}
    queries = make_queries(data, 20, seed=11)
    nprobe = ivf.store.params["nprobe"]
    _, plain = ivf.store.search(queries, 10, ids=ivf.ids_matching(where))
    assert (plain >= 0).sum(1).min() < 3, f"nprobe {nprobe} already reaches every list: not a test of widening"
    for row in ivf.search(queries, 10, where=where):
        assert sorted(h.id for h in row) == sorted(ids[[1, 5002, 11003]].tolist())


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "JSON object"),
        ({}, "1 to 16 fields"),
        ({f"f{i}": 1 for i in range(17)}, "1 to 16 fields"),
        ({'a"b': 1}, "no quotes"),
        ({"a": []}, "1 to 100 accepted values"),
        ({"a": None}, "strings, numbers or booleans"),
        ({"a": {"b": 1}}, "strings, numbers or booleans"),
        ({"a": float("nan")}, "strings, numbers or booleans"),
    ],
)
def test_bad_filters_get_a_specific_error(bad, message):
    with pytest.raises(GalleryError, match=message):
        check_filter(bad)


@pytest.fixture(scope="module")
def live_meta(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("serve-filters")
    app, state, images = build_service(tmp, openclip_fnd, n_images=6)
    server = start_server(app)
    yield server, state, images, tmp
    server.stop()


def test_uploads_carry_metadata_and_searches_filter_on_it(live_meta):
    server, state, images, tmp = live_meta
    new = make_images(tmp / "new", 4, seed=21)
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in new]
    metas = [{"title": f"Shoe {i}", "category": "shoes" if i < 3 else "bags", "price": 10 * i} for i in range(4)]
    r = requests.post(f"{server.url}/v1/gallery", headers=KEY, files=files, data={"metadata": json.dumps(metas)})
    assert r.status_code == 200, r.text
    added = {a["filename"]: a["id"] for a in r.json()["added"]}
    shoes = {added[p.name] for p in new[:3]}

    ref = images[0]
    n = state.gallery.count()
    upload = {"image": (ref.name, ref.read_bytes(), "image/png")}
    r = requests.post(
        f"{server.url}/v1/search", headers=KEY, files=upload, data={"k": n, "filter": '{"category": "shoes"}'}
    )
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert {x["id"] for x in got} == shoes and all(x["metadata"]["category"] == "shoes" for x in got)
    assert {x["metadata"]["title"] for x in got} == {"Shoe 0", "Shoe 1", "Shoe 2"}

    tokens = state.retriever.pseudo_tokens(Image.open(ref))
    payload = base64.b64encode(encode_payload(tokens[0].numpy(), state.qe_fingerprint, "fp16")).decode()
    body = {"payload": payload, "k": 2, "filter": {"category": ["shoes", "bags"], "price": [0, 30]}}
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json=body)
    assert r.status_code == 200 and {x["id"] for x in r.json()["results"]} == {added[new[0].name], added[new[3].name]}
    # without the filter the same search ranks all items
    unfiltered = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload, "k": n})
    assert len(unfiltered.json()["results"]) == n

    # one object for every image of the request
    more = make_images(tmp / "more", 2, seed=33)
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in more]
    r = requests.post(f"{server.url}/v1/gallery", headers=KEY, files=files, data={"metadata": '{"category": "hats"}'})
    assert r.status_code == 200
    assert len(state.gallery.ids_matching({"category": "hats"})) == 2


@pytest.mark.parametrize(
    "data, code",
    [
        ({"filter": "{not json"}, "bad_filter"),
        ({"filter": '{"a": null}'}, "bad_filter"),
        ({"filter": "[]"}, "bad_filter"),
    ],
)
def test_a_bad_filter_on_thin_client_search_is_422(live_meta, data, code):
    server, _, images, _ = live_meta
    upload = {"image": (images[0].name, images[0].read_bytes(), "image/png")}
    r = requests.post(f"{server.url}/v1/search", headers=KEY, files=upload, data=data)
    assert r.status_code == 422 and r.json()["code"] == code, r.text


def test_bad_filters_and_metadata_over_http_are_422(live_meta):
    server, state, images, _ = live_meta
    tokens = state.retriever.pseudo_tokens(Image.open(images[0]))
    payload = base64.b64encode(encode_payload(tokens[0].numpy(), state.qe_fingerprint, "fp16")).decode()
    for bad in ({}, {"a": None}, {"a": []}, {'a"': 1}):
        r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload, "filter": bad})
        assert r.status_code == 422 and r.json()["code"] == "validation", (bad, r.text)
    files = [("images", (images[0].name, images[0].read_bytes(), "image/png"))]
    for bad, why in (("[{}, {}]", "lists 2 objects for 1 images"), ("{x", "not valid JSON"), ("[1]", "JSON object")):
        r = requests.post(f"{server.url}/v1/gallery", headers=KEY, files=files, data={"metadata": bad})
        assert r.status_code == 422 and r.json()["code"] == "bad_metadata" and why in r.json()["detail"], r.text


def test_cli_search_filter(tmp_path, tiny_openclip_dir):
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    images = make_images(tmp_path / "imgs", 6, seed=5)
    lines = [json.dumps({"path": p.name, "category": "shoes" if i % 2 else "bags"}) for i, p in enumerate(images)]
    (tmp_path / "imgs" / "meta.jsonl").write_text("\n".join(lines))
    gallery = str(tmp_path / "g")
    runner = CliRunner()
    r = runner.invoke(
        cli,
        ["index", str(tmp_path / "imgs"), "--gallery", gallery, "--foundation", tiny_openclip_dir[0],
         "--metadata", str(tmp_path / "imgs" / "meta.jsonl"), "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    base = ["search", "--gallery", gallery, "--image", str(images[0]), "-k", "6", "--json"]
    r = runner.invoke(cli, [*base, "--filter", '{"category": "shoes"}'])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(hits) == 3 and {h["path"] for h in hits} == {str(images[i].resolve()) for i in (1, 3, 5)}
    assert all(h["metadata"]["category"] == "shoes" for h in hits)
    r = runner.invoke(cli, [*base, "--filter", '{"category": null}'])
    assert r.exit_code != 0 and "strings, numbers or booleans" in str(r.exception)
