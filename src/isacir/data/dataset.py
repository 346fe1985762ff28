"""Decode images in DataLoader workers without letting one bad file end a batch.

Training, the teacher cache, gallery indexing and the Ray path all read images through this one
dataset, so every bad-file reason (``empty``, ``truncated``, ``corrupt``, ``too_large``,
``missing``) is counted the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from PIL import Image

from ..errors import ImageDecodeError
from .imageio import load_image
from .sources import ImageRecord, content_hash


class DecodeDataset:
    """Map-style dataset: read bytes, hash them, decode safely and transform (in DataLoader workers).

    Items are ``(index, content hash, pixels, error)``; a bad image yields ``error`` as
    ``"reason|message"`` instead of raising, so one bad file never kills a batch.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[Image.Image], Any]):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, str, Any, str]:
        rec = self.records[i]
        try:
            data = rec.read_bytes()
            digest = content_hash(data)
            image = load_image(data)
            return i, digest, self.transform(image), ""
        except ImageDecodeError as exc:
            return i, "", None, f"{exc.reason}|{rec.key}: {exc}"
        except OSError as exc:
            return i, "", None, f"missing|{rec.key}: {exc}"


def collate_list(batch: list) -> list:
    """Keep a batch as a list of items (they hold None for bad images, which default_collate rejects)."""
    return batch


def iter_batches(items: Sequence, batch_size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
