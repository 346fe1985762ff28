"""Weights for a closed network: a bundle packed from a hub cache loads, with the network off, where
it is unpacked. Tiny models are saved in the hub cache's real layout (blobs, snapshot links, refs),
since no machine here can download the real ones."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from isacir.testing import cache_hub_repo
from isacir.weights import HUB, MANIFEST_NAME, ModelRef, WeightsError, pack, predicted_repos, read_manifest, unpack

CLIP_REPO, BLIP_REPO = "isacir-test/tiny-clip", "isacir-test/tiny-blip"
BACKBONE, BACKBONE_REPO = "mobilenetv3_small_050", "timm/mobilenetv3_small_050.lamb_in1k"
MODELS = [
    ModelRef("foundation", f"openclip:hf-hub:{CLIP_REPO}"),
    ModelRef("foundation", f"hf-blip:{BLIP_REPO}"),
    ModelRef("backbone", BACKBONE),
]


@pytest.fixture(scope="module")
def source_hub(tmp_path_factory):
    """A connected machine's hub cache: a tiny open_clip Hub model, a tiny BLIP, a timm backbone's
    weights (random, the real architecture), and a repository nobody asked for."""
    import timm
    from safetensors.torch import save_file

    from isacir.testing import save_tiny_blip, save_tiny_openclip

    tmp = tmp_path_factory.mktemp("weights-src")
    hub = tmp / "hub"
    clip = Path(save_tiny_openclip(tmp / "clip", seed=3).split("@", 1)[1])
    cache_hub_repo(hub, CLIP_REPO, {p.name: p for p in clip.iterdir() if p.name.startswith("open_clip_")})
    blip = Path(save_tiny_blip(tmp / "blip", seed=3).split(":", 1)[1])
    cache_hub_repo(hub, BLIP_REPO, {p.name: p for p in blip.iterdir() if p.is_file()})
    save_file(timm.create_model(BACKBONE).state_dict(), str(tmp / "model.safetensors"))
    cache_hub_repo(hub, BACKBONE_REPO, {"model.safetensors": tmp / "model.safetensors"})
    (tmp / "junk.bin").write_bytes(os.urandom(4096))
    cache_hub_repo(hub, "other/unrelated", {"model.safetensors": tmp / "junk.bin"})
    return hub, {"clip": clip, "blip": blip}


@pytest.fixture(scope="module")
def bundle(source_hub, tmp_path_factory):
    hub, _ = source_hub
    out = tmp_path_factory.mktemp("weights-bundle") / "bundle.tar"
    manifest = pack(MODELS, out, cache_dir=hub, download=False)
    return out, manifest


def test_the_repositories_a_model_reads_come_from_its_loaders_own_configs():
    assert predicted_repos(ModelRef("foundation", "openclip:ViT-L-14/openai")) == [
        "timm/vit_large_patch14_clip_224.openai"
    ]
    # a multilingual tower also reads its text model's config and tokenizer
    assert predicted_repos(ModelRef("foundation", "openclip:xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k")) == [
        "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k",
        "xlm-roberta-base",
    ]
    assert predicted_repos(ModelRef("foundation", "hf-blip:Salesforce/blip-itm-large-coco")) == [
        "Salesforce/blip-itm-large-coco"
    ]
    assert predicted_repos(ModelRef("backbone", "efficientnet_b0")) == ["timm/efficientnet_b0.ra_in1k"]
    for name, why in [
        ("openclip:ViT-B-32", "random init"),
        ("openclip:ViT-B-32@/somewhere/ckpt.pt", "travels as it is"),
        ("openclip:ViT-B-32/no-such-tag", "no pretrained tag"),
    ]:
        with pytest.raises(WeightsError, match=why):
            predicted_repos(ModelRef("foundation", name))


def test_a_bundle_holds_exactly_what_the_models_read_with_checked_hashes(bundle, source_hub, monkeypatch):
    import torch
    from huggingface_hub import constants

    from isacir.foundation import create_foundation

    out, manifest = bundle
    hub, made = source_hub
    assert [(m["kind"], m["name"]) for m in manifest["models"]] == [(r.kind, r.name) for r in MODELS]
    # the fingerprints are the models' own: open_clip's equals the original folder's; BLIP's config
    # records where it was read from, so its fingerprint is checked against the connected side's
    # cache, and its weights against the original folder
    fp = {m["name"]: m["fingerprint"] for m in manifest["models"]}
    assert fp[MODELS[0].name] == create_foundation(f"openclip:local-dir:{made['clip']}").fingerprint
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    blip = create_foundation(MODELS[1].name)
    assert fp[MODELS[1].name] == blip.fingerprint
    original = create_foundation(f"hf-blip:{made['blip']}").state_dict()
    assert all(torch.equal(v, original[k]) for k, v in blip.state_dict().items())
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == MANIFEST_NAME
        assert not any("unrelated" in n for n in names), "a repository no model reads stays out"
        for f in manifest["files"]:
            member = tar.extractfile(f["path"])
            assert member is not None
            assert hashlib.sha256(member.read()).hexdigest() == f["sha256"]
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {ln["path"]: ln["target"] for ln in manifest["links"]} and links
    assert manifest["bytes"] == sum(f["size"] for f in manifest["files"])
    assert read_manifest(out)["models"] == manifest["models"]
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    shown = CliRunner().invoke(cli, ["weights", "show", str(out), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout.strip().splitlines()[-1])["models"] == manifest["models"]
    assert sorted(manifest["seeded_from_cache"]) == sorted([CLIP_REPO, BLIP_REPO, BACKBONE_REPO])


def test_unpacked_weights_load_with_the_network_off_through_the_cli(bundle, tmp_path):
    out, manifest = bundle
    closed = tmp_path / "closed"
    report = unpack(out, closed)  # checks every model offline against the packed fingerprints
    assert report["checked"] == {m["name"]: m["fingerprint"] for m in manifest["models"]}
    assert report["written"] == len(manifest["files"]) + len(manifest["links"])
    assert unpack(out, closed, check=False)["written"] == 0  # twice: nothing to write
    # the way an operator starts it: a fresh process, told only the folder
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "empty-home")  # no other cache to fall back on
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "--weights-dir",
            str(closed),
            "foundation",
            "info",
            MODELS[0].name,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["fingerprint"] == manifest["models"][0]["fingerprint"]
    # without the folder the same process has nothing to load
    env.pop("ISACIR_WEIGHTS_DIR", None)
    env["HF_HUB_OFFLINE"] = "1"
    bare = subprocess.run(
        [sys.executable, "-m", "isacir.cli", "foundation", "info", MODELS[0].name, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bare.returncode == 2 and "no cached copy" in bare.stderr


def _rewrite(src: Path, dst: Path, change) -> None:
    """A copy of the bundle ``src`` with each member passed through ``change(info, data)``."""
    with tarfile.open(src) as tar, tarfile.open(dst, "w") as new:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None
            for info, payload in change(m, data):
                new.addfile(info, io.BytesIO(payload) if payload is not None else None)


def test_a_damaged_or_foreign_bundle_is_refused_and_nothing_is_written(bundle, tmp_path):
    out, manifest = bundle
    blob = max(manifest["files"], key=lambda f: f["size"])["path"]

    def flip(m, data):
        if m.name == blob:
            data = bytes([data[0] ^ 1]) + data[1:]
        yield m, data

    def extra(m, data):
        yield m, data
        if m.name == MANIFEST_NAME:
            evil = tarfile.TarInfo(f"{HUB}/models--x--y/blobs/evil")
            evil.size = 3
            yield evil, b"bad"

    for change, why in [(flip, "damaged"), (extra, "not what the manifest lists")]:
        bad = tmp_path / f"{change.__name__}.tar"
        _rewrite(out, bad, change)
        closed = tmp_path / f"closed-{change.__name__}"
        with pytest.raises(WeightsError, match=why):
            unpack(bad, closed, check=False)
        assert not any(p.is_file() or p.is_symlink() for p in (closed / HUB).rglob("*"))
    (tmp_path / "not.tar").write_bytes(b"hello")
    with pytest.raises(WeightsError, match="not a weights bundle"):
        unpack(tmp_path / "not.tar", tmp_path / "x")


def test_packing_without_the_network_names_the_model_the_cache_lacks(source_hub, tmp_path):
    hub, _ = source_hub
    partial = tmp_path / "hub"
    shutil.copytree(hub, partial, symlinks=True)
    shutil.rmtree(partial / ("models--" + BACKBONE_REPO.replace("/", "--")))
    with pytest.raises(WeightsError, match=f"backbone {BACKBONE}"):
        pack(MODELS, tmp_path / "b.tar", cache_dir=partial, download=False)
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob(".isacir-weights-*"))
    with pytest.raises(WeightsError, match="at least one"):
        pack([], tmp_path / "c.tar")


@pytest.mark.parametrize("python_filter", [True, False], ids=["data-filter", "no-data-filter"])
def test_an_archive_whose_manifest_lists_paths_outside_is_refused(tmp_path, monkeypatch, python_filter):
    """The manifest itself may be hostile: a listed path that climbs out, or a listed link that points
    out, is refused before anything is written, on Pythons with tarfile's data filter and without."""
    from isacir.archive import ArchiveError, extract_checked

    if not python_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(name: str, member: tarfile.TarInfo, data: bytes = b"") -> tuple[Path, dict]:
        path = tmp_path / f"{name}.tar"
        entry = {"path": member.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = (
            {"files": [entry]}
            if member.isfile()
            else {"files": [], "links": [{"path": member.name, "target": member.linkname}]}
        )
        with tarfile.open(path, "w") as tar:
            raw = json.dumps(manifest).encode()
            info = tarfile.TarInfo("m.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            member.size = len(data) if member.isfile() else 0
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
        return path, manifest

    climb = tarfile.TarInfo("a/../../escape")
    link = tarfile.TarInfo("a/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    for name, member, data in [("climb", climb, b"out"), ("link", link, b"")]:
        path, manifest = archive(name, member, data)
        dest = tmp_path / f"dest-{name}"
        dest.mkdir()
        with pytest.raises(ArchiveError, match="points outside the folder"):
            extract_checked(path, "m.json", manifest, dest)
        assert not list(dest.rglob("*")) and not (tmp_path / "escape").exists()
    inside = tarfile.TarInfo("a/b/fine")
    path, manifest = archive("fine", inside, b"ok")
    extract_checked(path, "m.json", manifest, tmp_path / "dest-fine")
    assert (tmp_path / "dest-fine" / "a" / "b" / "fine").read_bytes() == b"ok"
