"""Edge packages: what a device downloads to update its model, and how it swaps one in.

A package is a gzip'd tar of an exported edge folder (``model.onnx`` and the other model files
``edge.json`` lists, then ``edge.json``). It is built byte-for-byte reproducibly (sorted members,
zero times and owners, no gzip timestamp), so its sha256 names its content: the server's manifest
states it, and a device checks it before anything is swapped.

On a device, ``isacir edge-update`` keeps versions side by side::

    EDGE            a symlink to the version in use (what the runtime opens)
    EDGE.versions/
        NAME/       model.onnx, edge.json, ... of each installed version
        state.json  {"current": NAME, "previous": NAME}
        .partial-*  a download in progress (resumed with an HTTP range request)

Switching is one atomic rename of a symlink, so a runtime that opens ``EDGE`` sees either the
old version or the new one, never a mix; ``--rollback`` switches back to the previous one.
Imports no torch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .runner import EDGE_CONFIG

PACKAGE_NAME = "edge-package.tar.gz"


class EdgePackageError(ValueError):
    pass


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _members(edge_dir: Path) -> list[str]:
    """The files a package holds: the model files ``edge.json`` lists, then ``edge.json``."""
    cfg_path = edge_dir / EDGE_CONFIG
    if not cfg_path.is_file():
        raise EdgePackageError(f"{edge_dir} is not an exported edge model (no {EDGE_CONFIG})")
    cfg = json.loads(cfg_path.read_text())
    files = sorted(set(cfg.get("files", {}).values()))
    for name in files:
        if "/" in name or name.startswith(".") or not (edge_dir / name).is_file():
            raise EdgePackageError(f"{edge_dir}: {EDGE_CONFIG} lists {name!r}, which is not a file of the folder")
    return [*files, EDGE_CONFIG]


def build_package(edge_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the package of ``edge_dir`` to ``out`` atomically; returns ``{"sha256", "size"}``."""
    edge_dir, out = Path(edge_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in _members(edge_dir):
                    data = (edge_dir / name).read_bytes()
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
            gz.flush()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"sha256": sha256_file(out), "size": out.stat().st_size}


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    sha256: str
    size: int


def package_of(edge_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> PackageInfo:
    """The package of an edge folder, built once next to it (or in ``cache_dir``) and reused.

    Its sha256 is kept in a sidecar written after the package, so a crash between the two leaves
    a package whose hash is computed again, never a wrong hash."""
    edge_dir = Path(edge_dir)
    where = Path(cache_dir) if cache_dir is not None else edge_dir.parent
    path = where / PACKAGE_NAME
    sidecar = where / (PACKAGE_NAME + ".json")
    newest_input = max((edge_dir / n).stat().st_mtime_ns for n in _members(edge_dir))
    if path.is_file() and sidecar.is_file() and path.stat().st_mtime_ns >= newest_input:
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("size") == path.stat().st_size:
                return PackageInfo(path, str(meta["sha256"]), int(meta["size"]))
        except (ValueError, KeyError):
            pass
    meta = build_package(edge_dir, path)
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, sidecar)
    return PackageInfo(path, meta["sha256"], meta["size"])


def extract_package(archive: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Unpack a downloaded package into the new folder ``dest``; returns its ``edge.json``.

    Only plain files at the top level are accepted: a package cannot write outside ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not member.isfile() or "/" in name or name.startswith(".") or name in ("", ".."):
                raise EdgePackageError(f"package member {name!r} is not a plain top-level file")
            src = tar.extractfile(member)
            assert src is not None
            with src, open(dest / name, "wb") as f:
                shutil.copyfileobj(src, f)
    cfg_path = dest / EDGE_CONFIG
    if not cfg_path.is_file():
        raise EdgePackageError(f"the package holds no {EDGE_CONFIG}")
    return json.loads(cfg_path.read_text())
