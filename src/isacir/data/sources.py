"""Unlabeled image sources: folders, file lists and WebDataset tar shards.

Every source becomes a sorted list of :class:`ImageRecord` so that training is map-style: a
per-epoch permutation of indices is a pure function of (seed, epoch), which is what makes exact
resume and identical DDP sharding possible. Tar shards (what img2dataset writes for CC3M) are
indexed once by member offset, so reading one image is a seek, not a scan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import IsacirError

#: Image extensions used for training data (the gallery side accepts a few more).
TRAIN_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class DataSourceError(IsacirError, ValueError):
    """A data source that does not exist or holds no images."""


@dataclass(frozen=True)
class ImageRecord:
    """Where one image lives: a file, or a member of a tar shard (``offset``/``size`` of its data)."""

    path: str
    member: str | None = None
    offset: int = 0
    size: int = 0

    @property
    def key(self) -> str:
        return f"{self.path}::{self.member}" if self.member else self.path

    def read_bytes(self) -> bytes:
        if self.member is None:
            with open(self.path, "rb") as f:
                return f.read()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def content_hash(data: bytes) -> str:
    """Identity of an image by content: renames and duplicates share one cache entry."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _walk_folder(folder: Path, extensions: tuple[str, ...], ignored: list[str] | None) -> list[ImageRecord]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(extensions):
                found.append(ImageRecord(str(Path(root) / name)))
            elif ignored is not None:
                ignored.append(str(Path(root) / name))
    return found


def _read_list(list_file: Path) -> list[ImageRecord]:
    records = []
    base = list_file.parent
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        records.append(ImageRecord(str(p if p.is_absolute() else base / p)))
    return records


def index_tar(tar_path: str | os.PathLike, extensions: Sequence[str] = TRAIN_EXTENSIONS) -> list[ImageRecord]:
    """Image members of one shard with their data offsets (headers only are read)."""
    records = []
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for info in tf:
                if info.isfile() and info.name.lower().endswith(tuple(extensions)):
                    records.append(ImageRecord(str(tar_path), info.name, info.offset_data, info.size))
    except (tarfile.TarError, OSError) as exc:
        raise DataSourceError(f"cannot read tar shard {tar_path}: {exc}") from None
    return records


def _expand_shards(spec: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    return expand_urls(spec)


def discover_images(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    extensions: Sequence[str] = TRAIN_EXTENSIONS,
    ignored: list[str] | None = None,
    canonical: bool = False,
) -> list[ImageRecord]:
    """Resolve folders (recursive), ``.txt``/``.lst`` file lists and ``.tar`` shards (brace patterns ok).

    ``canonical``: every path absolute with symlinks and ``..`` resolved (a tar member keeps its
    ``shard::member`` form with the shard's canonical path), so one file has one spelling
    whatever the working directory; the gallery keys its items by it.

    Files named in a list are not checked here: a missing or corrupt one is skipped and counted
    when it is read, like any other bad image. Files in folders with other extensions are left
    out and, when ``ignored`` is given, listed there.
    """
    extensions = tuple(e.lower() for e in extensions)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    records: list[ImageRecord] = []
    for source in sources:
        s = str(source)
        if ".tar" in s and ("{" in s or s.endswith(".tar")):
            shards = _expand_shards(s)
            missing = [p for p in shards if not Path(p).is_file()]
            if missing:
                raise DataSourceError(f"tar shard(s) not found: {missing[:3]}{'...' if len(missing) > 3 else ''}")
            for shard in shards:
                records.extend(index_tar(shard, extensions))
            continue
        p = Path(s)
        if p.is_dir():
            records.extend(_walk_folder(p, extensions, ignored))
        elif p.is_file() and p.suffix.lower() in (".txt", ".lst"):
            records.extend(_read_list(p))
        elif p.is_file() and p.suffix.lower() in extensions:
            records.append(ImageRecord(str(p)))
        else:
            raise DataSourceError(f"{s}: not a folder, a .txt/.lst file list, a .tar shard (pattern) or an image file")
    if not records:
        raise DataSourceError(f"no images found in {', '.join(map(str, sources))}")
    if canonical:
        records = [dataclasses.replace(r, path=os.path.realpath(r.path)) for r in records]
    return records
