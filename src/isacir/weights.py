"""Model weights for a closed network: pack them where there is internet, unpack them where there is none.

Every pretrained loader isacir uses fetches through the Hugging Face hub cache: open_clip's tags
(``openclip:ViT-L-14/openai``) and ``hf-hub:`` models, transformers' BLIP, and timm's light
backbones. So a bundle is a piece of that cache, in its own layout (``models--org--name/`` with
``blobs/``, ``snapshots/REV/`` links and ``refs/main``), plus a manifest with every file's sha256
and every model's fingerprint.

Packing runs the real loaders in a child process whose hub cache is a fresh staging folder (seeded
from this machine's cache, so what is here already is not downloaded again), then loads everything
once more with the network off: a bundle is written only when it is known to be complete.
Unpacking checks every file against the manifest before anything reaches the cache, and by
default loads every model again offline and compares fingerprints.

On the closed side, ``isacir --weights-dir DIR`` (or ``ISACIR_WEIGHTS_DIR``) points the hub cache
at ``DIR/hub`` and turns the network off (``HF_HUB_OFFLINE``), before any loader is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .archive import extract_checked, inventory, read_archive_manifest, sha256_file, write_archive
from .errors import IsacirError

BUNDLE_FORMAT = 1
#: the manifest at the root of a bundle
MANIFEST_NAME = "isacir-weights.json"
#: the hub cache inside a bundle and inside a weights folder
HUB = "hub"


class WeightsError(IsacirError):
    """A bundle that cannot be made or trusted, or weights that do not load offline."""


@dataclass(frozen=True)
class ModelRef:
    """One model a bundle carries: a foundation name, or a light backbone (timm) name."""

    kind: str  # "foundation" | "backbone"
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("foundation", "backbone"):
            raise WeightsError(f"a bundle carries foundations and backbones, not {self.kind!r}")


# ----- the closed side: where loaders look ------------------------------------------------------


def hub_cache() -> Path:
    """The hub cache loaders read now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def use_weights_dir(directory: str | os.PathLike) -> Path:
    """Point every loader at ``DIRECTORY/hub`` and turn the network off; returns the hub folder.

    Set before the loaders import, through the environment; where ``huggingface_hub`` is imported
    already, its constants (which it reads at each call) are set too.
    """
    hub = Path(directory).expanduser().resolve() / HUB
    if not hub.is_dir():
        raise WeightsError(f"weights folder {hub.parent} has no {HUB}/ folder: unpack a bundle there first")
    os.environ["HF_HUB_CACHE"] = str(hub)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        constants.HF_HUB_CACHE = str(hub)
        constants.HF_HUB_OFFLINE = True
    return hub


# ----- which hub repositories a model reads -----------------------------------------------------


def predicted_repos(ref: ModelRef) -> list[str]:
    """The hub repositories the loader of ``ref`` reads from, as far as its name tells.

    Used to seed the staging cache from this machine's cache; the loader itself decides in the
    end (a repository it reads that is missing here is downloaded, or named in the error offline).
    Local files and folders travel on their own and are refused here.
    """
    if ref.kind == "backbone":
        return _backbone_repos(ref.name)
    from .foundation.factory import parse_foundation_name

    family, spec = parse_foundation_name(ref.name)
    if family == "openclip":
        return _openclip_repos(ref.name, spec)
    if family == "hf-blip":
        if spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists():
            raise WeightsError(f"{ref.name}: a local folder travels as it is; copy it to the closed side")
        return [spec]
    raise WeightsError(f"{ref.name}: the {family!r} family does not say where its weights come from")


def _openclip_repos(name: str, spec: str) -> list[str]:
    import open_clip

    if "@" in spec or spec.startswith("local-dir:"):
        raise WeightsError(f"{name}: a local checkpoint travels as it is; copy it to the closed side")
    if spec.startswith("hf-hub:"):
        return [spec.split(":", 1)[1]]
    if "/" not in spec:
        raise WeightsError(f"{name} names no pretrained weights (random init): nothing to pack")
    arch, tag = spec.split("/", 1)
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise WeightsError(f"{name}: open_clip knows no pretrained tag {tag!r} for {arch!r}")
    # open_clip's own reading of the entry: ``org/repo/`` or ``org/repo/filename``
    repos = [os.path.split(cfg["hf_hub"])[0]]
    text = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    repos += [text[k] for k in ("hf_tokenizer_name", "hf_model_name") if text.get(k)]
    return list(dict.fromkeys(repos))


def _backbone_repos(name: str) -> list[str]:
    from timm.models import get_pretrained_cfg

    from .query.backbones import resolve_backbone

    spec = resolve_backbone(name)
    cfg = get_pretrained_cfg(spec.timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"backbone {name!r}: timm names no hub repository for its pretrained weights")
    return [cfg.hf_hub_id]


def _repo_folder(repo: str) -> str:
    """The hub cache's folder name of a model repository."""
    return "models--" + repo.replace("/", "--")


# ----- loading in a child process: what a closed machine would do --------------------------------


def _probe(refs: Sequence[ModelRef], hub: Path, offline: bool) -> dict[str, str]:
    """Load every model in a fresh process whose hub cache is ``hub``; returns name -> fingerprint.

    A fresh process because the hub library reads its cache and offline settings when it is
    imported: this one may have imported it with other settings already."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(hub), HF_HUB_DISABLE_PROGRESS_BARS="1")
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "isacir.weights"],
        input=json.dumps([asdict(r) for r in refs]),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise WeightsError(
            f"loading {'offline ' if offline else ''}from {hub} failed: {why}"
            + (" (pack on a machine with internet, or without --no-download)" if offline else "")
        )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _load_and_fingerprint(ref: ModelRef) -> str:
    if ref.kind == "foundation":
        from .foundation import create_foundation

        return create_foundation(ref.name).fingerprint
    from .fingerprint import hash_state_dict
    from .query.backbones import create_backbone

    model, _, _ = create_backbone(ref.name, pretrained=True)
    return hash_state_dict(model.state_dict(), extra=ref.name)


def _probe_main() -> None:
    """The child of :func:`_probe`: one JSON line of fingerprints, or the error on stderr."""
    refs = [ModelRef(**r) for r in json.loads(sys.stdin.read())]
    found: dict[str, str] = {}
    for ref in refs:
        try:
            found[ref.name] = _load_and_fingerprint(ref)
        except Exception as exc:  # the parent shows the last stderr line: make it the whole story
            sys.stderr.write(f"{ref.kind} {ref.name}: {type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
            sys.exit(1)
    sys.stdout.write(json.dumps(found) + "\n")


# ----- pack --------------------------------------------------------------------------------------


def _seed(staging_hub: Path, source_hub: Path, repos: Iterable[str]) -> list[str]:
    """Copy what this machine's cache holds of ``repos`` into the staging cache (hard links where
    the file system allows: nothing is read twice); returns the repositories found."""
    found = []
    for repo in dict.fromkeys(repos):
        src = source_hub / _repo_folder(repo)
        if src.is_dir():
            shutil.copytree(src, staging_hub / src.name, symlinks=True, copy_function=_link_or_copy)
            found.append(repo)
    return found


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def pack(
    models: Sequence[ModelRef],
    out: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Write a bundle of ``models``' weights to ``out`` (a .tar); returns its manifest.

    ``cache_dir``: the hub cache to take what is here already from (default: the one loaders use).
    ``download=False`` takes only what is cached and fails, naming the model, where that is not
    enough. The archive appears only once every model has loaded from it with the network off.
    """
    if not models:
        raise WeightsError("name at least one --foundation or --backbone to pack")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache()
    repos = [repo for ref in models for repo in predicted_repos(ref)]
    with tempfile.TemporaryDirectory(prefix=".isacir-weights-", dir=out.parent) as tmp:
        staging = Path(tmp)
        (staging / HUB).mkdir()
        seeded = _seed(staging / HUB, source, repos)
        t0 = time.perf_counter()
        if download:
            _probe(models, staging / HUB, offline=False)
        fingerprints = _probe(models, staging / HUB, offline=True)  # complete without the network
        files, links = inventory(staging, [HUB])
        manifest = {
            "format": BUNDLE_FORMAT,
            "isacir": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "models": [{**asdict(r), "fingerprint": fingerprints[r.name]} for r in models],
            "repos": sorted(set(repos)),
            "seeded_from_cache": seeded,
            "files": files,
            "links": links,
            "bytes": sum(f["size"] for f in files),
        }
        write_archive(staging, MANIFEST_NAME, manifest, [HUB], out)
        manifest["took_s"] = round(time.perf_counter() - t0, 2)
    return manifest


# ----- unpack ------------------------------------------------------------------------------------


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a bundle, checked for its format."""
    return read_archive_manifest(Path(bundle), MANIFEST_NAME, "weights bundle", BUNDLE_FORMAT, WeightsError)


def _merge(src: Path, dst: Path, sha256: dict[str, str]) -> int:
    """Move the unpacked hub cache into place: files and links that are there already and equal stay;
    every other one is replaced atomically (``refs/main`` then names the bundle's revision).
    ``sha256``: each unpacked file's hash by its path under ``src`` (checked already)."""
    moved = 0
    for path in sorted(src.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            if target.is_symlink() and os.readlink(target) == os.readlink(path):
                continue
        elif target.is_file() and not target.is_symlink() and target.stat().st_size == path.stat().st_size:
            if sha256_file(target) == sha256[rel.as_posix()]:
                continue
        os.replace(path, target)
        moved += 1
    return moved


def unpack(
    bundle: str | os.PathLike, weights_dir: str | os.PathLike | None = None, check: bool = True
) -> dict[str, Any]:
    """Put a bundle's weights where loaders find them: ``WEIGHTS_DIR/hub``, or this machine's hub
    cache. Every file is checked against the manifest before anything moves; with ``check``, every
    model is then loaded offline and its fingerprint compared with the one recorded when packing."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    hub = (Path(weights_dir).expanduser().resolve() / HUB) if weights_dir is not None else hub_cache()
    hub.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".isacir-unpack-", dir=hub.parent) as tmp:
        staging = Path(tmp)
        extract_checked(bundle, MANIFEST_NAME, manifest, staging, WeightsError)
        hashes = {f["path"].removeprefix(HUB + "/"): f["sha256"] for f in manifest["files"]}
        moved = _merge(staging / HUB, hub, hashes)
    report: dict[str, Any] = {
        "hub": str(hub),
        "models": [m["name"] for m in manifest["models"]],
        "files": len(manifest["files"]),
        "bytes": manifest["bytes"],
        "written": moved,
    }
    if check:
        want = {m["name"]: m["fingerprint"] for m in manifest["models"]}
        refs = [ModelRef(m["kind"], m["name"]) for m in manifest["models"]]
        got_fp = _probe(refs, hub, offline=True)
        wrong = [n for n in want if got_fp.get(n) != want[n]]
        if wrong:
            raise WeightsError(
                f"{', '.join(wrong)}: loads offline from {hub} but its fingerprint differs from the packed one "
                "(another revision in this cache wins?)"
            )
        report["checked"] = got_fp
    report["took_s"] = round(time.perf_counter() - t0, 2)
    return report


if __name__ == "__main__":
    _probe_main()
