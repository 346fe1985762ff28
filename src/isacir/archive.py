"""Archives an operator can trust: a tar with a JSON manifest that lists every file's sha256.

Weight bundles (:mod:`isacir.weights`) and backups (:mod:`isacir.backup`) are both moved between
machines by hand, so both are checked the same way before anything is used: every member must be
the manifest, a folder, or a file or link the manifest lists (no more, no less), and every file's
content must hash to what the manifest recorded. The archive is written beside its destination
and renamed into place, so a crash never leaves half an archive under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from .errors import IsacirError


class ArchiveError(IsacirError):
    """An archive that is not what its manifest says."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inventory(root: Path, parts: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every regular file under ``root/PART`` (for each of ``parts``) with its sha256 and size, and
    every symbolic link with its target; paths relative to ``root``."""
    files: list[dict[str, Any]] = []
    links: list[dict[str, str]] = []
    for part in parts:
        top = root / part
        found = [top] if top.is_file() or top.is_symlink() else sorted(top.rglob("*"))
        for path in found:
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                links.append({"path": rel, "target": os.readlink(path)})
            elif path.is_file():
                files.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
    return files, links


def write_archive(root: Path, manifest_name: str, manifest: dict[str, Any], parts: list[str], out: Path) -> None:
    """Write ``manifest`` (as ``manifest_name``, first) and ``root/PART`` for each part to ``out``,
    atomically: the tar is built beside ``out`` and renamed into place."""
    (root / manifest_name).write_text(json.dumps(manifest, indent=2) + "\n")
    part_file = out.with_name(f".{out.name}.part-{os.getpid()}")
    try:
        with tarfile.open(part_file, "w") as tar:
            tar.add(root / manifest_name, manifest_name)
            for part in parts:
                if (root / part).exists():
                    tar.add(root / part, part)
        os.replace(part_file, out)
    except BaseException:
        part_file.unlink(missing_ok=True)
        raise


def read_archive_manifest(
    archive: Path, manifest_name: str, what: str, fmt: int, error: type[IsacirError] = ArchiveError
) -> dict[str, Any]:
    """The JSON manifest of ``archive``, of format ``fmt``; ``error`` (naming the problem) when it
    is not a ``what`` this isacir reads."""
    if not archive.is_file():
        raise error(f"no {what} at {archive}")
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile(manifest_name)
            raw = member.read() if member is not None else b""
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise error(f"{archive} is not a {what} ({manifest_name} unreadable: {exc})") from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise error(f"{archive}: {manifest_name} is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise error(f"{archive}: {manifest_name} lists no files")
    if manifest.get("format") != fmt:
        raise error(f"{archive}: {what} format {manifest.get('format')!r}; this isacir reads format {fmt}")
    return manifest


def extract_checked(
    archive: Path,
    manifest_name: str,
    manifest: dict[str, Any],
    dest: Path,
    error: type[IsacirError] = ArchiveError,
) -> None:
    """Extract ``archive`` into ``dest`` after checking its members against ``manifest``, then check
    every file's sha256; raises ``error`` (naming the first problem) otherwise. The caller
    extracts into a staging folder it removes on error, so nothing unchecked is ever used."""
    files = {f["path"]: f for f in manifest["files"]}
    links = {ln["path"]: ln["target"] for ln in manifest.get("links", [])}
    with tarfile.open(archive) as tar:
        seen: set[str] = set()
        for m in tar.getmembers():
            if m.name == manifest_name or m.isdir():
                continue
            if (m.isfile() and m.name in files and m.size == files[m.name]["size"]) or (
                m.issym() and links.get(m.name) == m.linkname
            ):
                seen.add(m.name)
                continue
            raise error(f"{archive}: member {m.name!r} is not what the manifest lists; refusing it")
        missing = (set(files) | set(links)) - seen
        if missing:
            raise error(f"{archive}: {len(missing)} listed file(s) missing, e.g. {sorted(missing)[0]}")
        _extract_inside(tar, dest, error, archive)
    for rel, f in files.items():
        got = sha256_file(dest / rel)
        if got != f["sha256"]:
            raise error(
                f"{archive}: {rel} has sha256 {got[:12]}..., the manifest says {f['sha256'][:12]}...: "
                "the archive is damaged; nothing was used"
            )


def _extract_inside(tar: tarfile.TarFile, dest: Path, error: type[IsacirError], archive: Path) -> None:
    """Extract with no absolute paths, no hard links and no links out of ``dest``. Every member is
    checked here, so a bad one is this module's error; tarfile's ``data`` filter is used too where
    this Python has it (3.11.0-3.11.3, Debian 12's system Python among them, lack it)."""
    root = dest.resolve()
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        pointed = (target.parent / m.linkname).resolve() if m.issym() else target
        if m.islnk() or not (target.is_relative_to(root) and pointed.is_relative_to(root)):
            raise error(f"{archive}: member {m.name!r} points outside the folder; refusing it")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:
        tar.extractall(dest)  # noqa: S202 (every member checked above)
