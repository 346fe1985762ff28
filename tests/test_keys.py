"""Scoped, hashed, reloadable API keys; rate limits; the audit log of gallery changes."""

from __future__ import annotations

import base64
import json
import multiprocessing
import time

import pytest
import requests
from PIL import Image
from serve_helpers import build_service, make_images, start_server
from typer.testing import CliRunner

from isacir.audit import AuditLog
from isacir.cli import app as cli
from isacir.edge.payload import encode_payload
from isacir.serve.keys import (
    ROLES,
    SCOPES,
    ApiKey,
    KeyFileError,
    KeyRing,
    add_key,
    hash_key,
    parse_scopes,
    read_key_file,
    revoke_key,
    rotate_key,
)


def test_roles_expand_and_unknown_scopes_are_named():
    assert parse_scopes("operator") == frozenset(ROLES["operator"])
    assert parse_scopes("admin") == frozenset(SCOPES)
    assert parse_scopes("search, metrics") == {"search", "metrics"}
    with pytest.raises(KeyFileError, match="unknown scope 'galery:write'"):
        parse_scopes("search,galery:write")
    with pytest.raises(KeyFileError, match="at least one scope"):
        parse_scopes(" , ")


def test_the_file_holds_hashes_and_every_command_keeps_the_others(tmp_path):
    f = tmp_path / "keys.toml"
    s1, k1 = add_key(f, "device-1", "device")
    s2, _ = add_key(f, "ops", "operator", rate_per_s=None)
    text = f.read_text()
    assert s1 not in text and s2 not in text and hash_key(s1) in text
    keys = {k.name: k for k in read_key_file(f)}
    assert keys["device-1"].scopes == {"search"} and keys["device-1"].rate_per_s == 50.0
    assert keys["ops"].rate_per_s is None and keys["ops"].scopes == set(ROLES["operator"])
    with pytest.raises(KeyFileError, match="already has a key named 'ops'"):
        add_key(f, "ops", "search")
    s3, k3 = rotate_key(f, "device-1")
    assert k3.scopes == k1.scopes and k3.sha256 == hash_key(s3) != k1.sha256
    revoke_key(f, "ops")
    assert [k.name for k in read_key_file(f)] == ["device-1"]
    with pytest.raises(KeyFileError, match="no key named 'ops'"):
        revoke_key(f, "ops")
    with pytest.raises(KeyFileError, match=r"\.toml"):
        add_key(tmp_path / "keys.txt", "x", "search")


@pytest.mark.parametrize(
    "body,match",
    [
        ('[[keys]]\nname = "a"\nsha256 = "abc"\nscopes = ["search"]\n', "64 lowercase hex"),
        (f'[[keys]]\nname = "a"\nsha256 = "{"0" * 64}"\nscopes = ["root"]\n', "unknown scope 'root'"),
        (f'[[keys]]\nname = "a"\nsha256 = "{"0" * 64}"\nscopes = ["search"]\nrate_per_s = -1\n', "rate_per_s"),
        (f'[[keys]]\nname = "a"\nsha256 = "{"0" * 64}"\nscopes = ["search"]\nkey = "plain"\n', "unknown field"),
        ("[[keys]\n", "not valid TOML"),
    ],
)
def test_a_bad_keys_file_is_a_specific_error(tmp_path, body, match):
    f = tmp_path / "keys.toml"
    f.write_text(body)
    with pytest.raises(KeyFileError, match=match):
        read_key_file(f)


def _add_many(args):
    path, prefix = args
    for i in range(8):
        add_key(path, f"{prefix}-{i}", "search")


def test_two_concurrent_writers_lose_no_key(tmp_path):
    f = tmp_path / "keys.toml"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_add_many, [(f, "a"), (f, "b")])
    assert sorted(k.name for k in read_key_file(f)) == sorted(f"{p}-{i}" for p in "ab" for i in range(8))


def test_the_token_bucket_allows_the_burst_then_the_rate():
    ring = KeyRing()
    key = ApiKey("k", "0" * 64, frozenset({"search"}), rate_per_s=2.0, burst=3)
    assert [ring.throttle(key, now=100.0) for _ in range(3)] == [None, None, None]
    assert ring.throttle(key, now=100.0) == pytest.approx(0.5)
    assert ring.throttle(key, now=100.25) == pytest.approx(0.25)  # half a token back, still short
    assert ring.throttle(key, now=100.5) is None  # one token after 0.5 s at 2/s
    assert ring.throttle(key, now=110.0) is None  # refills to the burst, not beyond
    assert [ring.throttle(key, now=110.0) for _ in range(3)] == [None, None, pytest.approx(0.5)]


def test_cli_add_prints_the_key_once_as_json_and_ls_never_does(tmp_path):
    f = tmp_path / "keys.toml"
    r = CliRunner().invoke(cli, ["keys", "add", "--file", str(f), "--name", "cam-7", "--scopes", "search", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout.strip().splitlines()[-1])
    assert shown["name"] == "cam-7" and shown["scopes"] == ["search"] and shown["key"].startswith("isk_")
    listed = CliRunner().invoke(cli, ["keys", "ls", "--file", str(f), "--json"])
    assert listed.exit_code == 0 and shown["key"] not in listed.output
    assert json.loads(listed.stdout.strip().splitlines()[-1])[0]["name"] == "cam-7"
    bad = CliRunner().invoke(cli, ["keys", "add", "--file", str(f), "--name", "x", "--scopes", "everything"])
    assert isinstance(bad.exception, KeyFileError) and "unknown scope 'everything'" in str(bad.exception)
    gone = CliRunner().invoke(cli, ["keys", "revoke", "--file", str(f), "--name", "cam-7", "--json"])
    assert gone.exit_code == 0 and json.loads(gone.stdout.strip().splitlines()[-1])["revoked"] == "cam-7"
    assert json.loads(CliRunner().invoke(cli, ["keys", "ls", "--file", str(f), "--json"]).stdout.splitlines()[-1]) == []


@pytest.fixture(scope="module")
def scoped(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("keys")
    f = tmp / "keys.toml"
    secrets = {
        name: add_key(f, name, scopes, rate_per_s=None)[0]
        for name, scopes in [
            ("device", "device"),
            ("operator", "operator"),
            ("admin", "admin"),
            ("writer", "gallery:write,images"),
        ]
    }
    secrets["slow"] = add_key(f, "slow", "search", rate_per_s=0.5, burst=2)[0]
    ring = KeyRing.from_file(f)
    ring.check_every_s = 0.2
    app, state, images = build_service(tmp, openclip_fnd, api_key=None, keys=ring)
    server = start_server(app)
    yield server, state, images, tmp, f, secrets
    server.stop()


def _payload(state, image_path) -> dict:
    tokens = state.retriever.pseudo_tokens(Image.open(image_path))
    raw = encode_payload(tokens[0].numpy(), state.qe_fingerprint, "fp16")
    return {"payload": base64.b64encode(raw).decode(), "text": "make it red", "k": 3}


def test_a_search_only_key_searches_but_cannot_change_the_gallery(scoped):
    server, state, images, _, _, secrets = scoped
    h = {"X-API-Key": secrets["device"]}
    r = requests.post(f"{server.url}/v1/search/tokens", json=_payload(state, images[0]), headers=h, timeout=30)
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]["id"]
    files = [("images", ("a.png", images[1].read_bytes(), "image/png"))]
    r = requests.post(f"{server.url}/v1/gallery", files=files, headers=h, timeout=30)
    assert r.status_code == 403 and r.json()["code"] == "forbidden" and "gallery:write" in r.json()["detail"]
    r = requests.delete(f"{server.url}/v1/gallery/{item}", headers=h, timeout=30)
    assert r.status_code == 403
    assert state.gallery.path_of(item) is not None  # the refused delete did nothing
    for path in ("/v1/pilot/summary", "/metrics", f"/v1/images/{item}"):
        assert requests.get(server.url + path, headers=h, timeout=30).status_code == 403, path
    assert requests.get(f"{server.url}/v1/info", headers={"X-API-Key": "isk_wrong"}, timeout=30).status_code == 401


def test_operator_and_admin_scopes(scoped):
    server, state, images, _, _, secrets = scoped
    op, admin = {"X-API-Key": secrets["operator"]}, {"Authorization": f"Bearer {secrets['admin']}"}
    item = next(iter(state.gallery.ids_for_paths([str(p) for p in images]).values()))
    assert requests.get(f"{server.url}/v1/pilot/summary", headers=op, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/v1/images/{item}/thumbnail", headers=op, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/metrics", headers=op, timeout=30).status_code == 403
    assert requests.get(f"{server.url}/metrics", headers=admin, timeout=30).status_code == 200
    assert requests.delete(f"{server.url}/v1/gallery/999999", headers=op, timeout=30).status_code == 403
    assert requests.delete(f"{server.url}/v1/gallery/999999", headers=admin, timeout=30).status_code == 404


def test_gallery_changes_are_audited_with_the_key_name(scoped, tmp_path):
    server, state, _, _, _, secrets = scoped
    h = {"X-API-Key": secrets["writer"]}
    new = make_images(tmp_path / "new", 1, seed=77)
    r = requests.post(
        f"{server.url}/v1/gallery",
        files=[("images", ("n.png", new[0].read_bytes(), "image/png"))],
        headers=h,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    new_id = r.json()["added"][0]["id"]
    assert requests.delete(f"{server.url}/v1/gallery/{new_id}", headers=h, timeout=30).status_code == 200
    log = AuditLog.of_gallery(state.gallery.dir).entries()
    mine = [e for e in log if any(i.get("id") == new_id for i in e.get("items", [])) or new_id in e.get("ids", [])]
    assert [(e["actor"], e["action"]) for e in mine] == [("writer", "gallery.add"), ("writer", "gallery.remove")]


def test_a_key_over_its_rate_gets_429_with_retry_after(scoped):
    server, _, _, _, _, secrets = scoped
    h = {"X-API-Key": secrets["slow"]}
    codes = [requests.get(f"{server.url}/v1/info", headers=h, timeout=30) for _ in range(4)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    limited = [r for r in codes[2:] if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert limited[0].json()["code"] == "rate_limited" and 1 <= int(limited[0].headers["Retry-After"]) <= 2
    # other keys have buckets of their own
    assert (
        requests.get(f"{server.url}/v1/info", headers={"X-API-Key": secrets["device"]}, timeout=30).status_code == 200
    )


def _status_within(url, headers, want, seconds=5.0) -> int:
    deadline = time.time() + seconds
    while True:
        code = requests.get(url, headers=headers, timeout=30).status_code
        if code == want or time.time() > deadline:
            return code
        time.sleep(0.1)


def test_keys_reload_without_a_restart_and_a_broken_file_keeps_the_old_ones(scoped):
    server, _, _, _, f, secrets = scoped
    new_secret, _ = add_key(f, "late", "search", rate_per_s=None)
    assert _status_within(f"{server.url}/v1/info", {"X-API-Key": new_secret}, 200) == 200
    good = f.read_text()
    f.write_text(good + "\n[[keys]\n")  # a typo: the service must keep the keys it had
    time.sleep(0.5)
    assert requests.get(f"{server.url}/v1/info", headers={"X-API-Key": new_secret}, timeout=30).status_code == 200
    f.write_text(good)
    revoke_key(f, "late")
    assert _status_within(f"{server.url}/v1/info", {"X-API-Key": new_secret}, 401) == 401
    assert (
        requests.get(f"{server.url}/v1/info", headers={"X-API-Key": secrets["device"]}, timeout=30).status_code == 200
    )


def test_a_plaintext_key_file_grants_every_scope(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops\nalpha\n\nbeta\n")
    ring = KeyRing.from_file(f)
    assert [k.name for k in ring.keys] == ["key-1", "key-2"]
    assert ring.authenticate("beta").scopes == set(SCOPES)
    assert ring.authenticate("gamma") is None and ring.authenticate("") is None
