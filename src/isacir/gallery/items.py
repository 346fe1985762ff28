"""What a gallery is made of: its items' ids, search hits, index reports and metadata filters."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.imageio import IMAGE_EXTENSIONS
from ..errors import IsacirError

GALLERY_FORMAT = 1
GALLERY_EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS))


class GalleryError(IsacirError):
    pass


#: a metadata filter: field -> value, or -> list of accepted values (fields are ANDed)
Filter = dict[str, Any]
FILTER_MAX_FIELDS = 16
FILTER_MAX_VALUES = 100
#: scheduling priority of the follower thread (Linux niceness applies per thread)
FOLLOWER_NICE = 10
#: a filter passing at most this many items is searched exactly over their stored vectors
FILTER_EXACT_LIMIT = 4096
#: a filter field's name: 1 to 64 characters, no quote, backslash or control character
FILTER_FIELD = r'^[^"\\\x00-\x1f\x7f]{1,64}$'


def check_filter(where: Any) -> dict[str, list]:
    """Validate a metadata filter; returns field -> accepted values. Why strict: a typo'd filter
    that silently matched nothing (or everything) would look like a retrieval failure."""
    if not isinstance(where, dict):
        raise GalleryError('a filter is a JSON object of field -> value, e.g. {"category": "shoes"}')
    if not 1 <= len(where) <= FILTER_MAX_FIELDS:
        raise GalleryError(f"a filter names 1 to {FILTER_MAX_FIELDS} fields, not {len(where)}")
    out: dict[str, list] = {}
    for key, value in where.items():
        if not isinstance(key, str) or not re.fullmatch(FILTER_FIELD, key):
            raise GalleryError(
                f"filter field {key!r}: 1 to 64 characters, no quotes, backslashes or control characters"
            )
        values = value if isinstance(value, list) else [value]
        if not 1 <= len(values) <= FILTER_MAX_VALUES:
            raise GalleryError(f"filter field {key!r}: 1 to {FILTER_MAX_VALUES} accepted values")
        for v in values:
            if not isinstance(v, (str, int, float)) or (isinstance(v, float) and not np.isfinite(v)):
                raise GalleryError(f"filter field {key!r}: values are strings, numbers or booleans, not {v!r}")
        out[key] = values
    return out


def item_id(key: str) -> int:
    """Stable id of an image location (path, or shard::member).

    53 bits, so ids survive JSON in browsers (JavaScript numbers are exact up to 2**53).
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 11


@dataclass
class IndexReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    #: files left out because an operator removed them (``--restore`` brings them back)
    tombstoned: int = 0
    restored: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "scanned": self.scanned,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "tombstoned": self.tombstoned,
            "restored": self.restored,
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "skipped_files": self.skipped,
            "ignored_files": len(self.ignored),
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images_per_s, 2),
        }

    def summary(self) -> str:
        skipped = sum(len(v) for v in self.skipped.values())
        why = ", ".join(f"{k}: {len(v)}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.scanned} images scanned: {self.added} added, {self.updated} re-embedded, "
            f"{self.unchanged} unchanged, {self.removed} removed, "
            + (f"{self.tombstoned} left out (removed by an operator; --restore), " if self.tombstoned else "")
            + (f"{self.restored} restored, " if self.restored else "")
            + f"{skipped} skipped ({why}), "
            f"{len(self.ignored)} other files ignored; {self.seconds:.1f}s ({self.images_per_s:.1f} img/s encoded)"
        )


@dataclass
class Hit:
    id: int
    path: str
    score: float
    metadata: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6), "metadata": self.metadata}


def _under(key: str, roots: list[str]) -> bool:
    path = key.split("::", 1)[0]
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
