"""The cycles of a registry on disk: one JSON record per cycle, and one cycle at a time.

``REGISTRY/cycles/{id}.json`` holds what a cycle did so far (its steps with their evidence), so
that a cycle killed halfway resumes where it stopped; ``REGISTRY/cycles/{id}/`` holds what it
trained. Records are replaced atomically; a non-blocking lock keeps a second process (the
service's background job and a command run by hand) from running a cycle at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from ..errors import IsacirError

#: states a cycle passes through; the last four end it
STATES = ("training", "trained", "canary", "promoted", "rolled_back", "refused", "failed")
OPEN = ("training", "trained", "canary")


class CycleBusy(IsacirError):
    """Another process is running a cycle step on this registry."""


class CycleStore:
    def __init__(self, registry_folder: str | Path):
        self.folder = Path(registry_folder) / "cycles"

    def path(self, cycle_id: str) -> Path:
        return self.folder / f"{cycle_id}.json"

    def workdir(self, cycle_id: str) -> Path:
        return self.folder / cycle_id

    def all(self) -> list[dict[str, Any]]:
        """Every cycle, oldest first (a record that cannot be read is reported, not skipped)."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError as exc:
                raise IsacirError(
                    f"cycle record {p} is not valid JSON ({exc}); it is only ever replaced whole"
                ) from None
        return sorted(out, key=lambda c: (c["started"], c["id"]))

    def open_cycle(self) -> dict[str, Any] | None:
        """The cycle still under way, if any."""
        return next((c for c in reversed(self.all()) if c["state"] in OPEN), None)

    def save(self, record: dict[str, Any]) -> None:
        record["updated"] = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path(record["id"]), json.dumps(record, indent=2) + "\n")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the cycle lock, or raise :class:`CycleBusy` at once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CycleBusy(f"another process is running a learning cycle on {self.folder.parent}") from None
            yield


def step(record: dict[str, Any], name: str, **detail: Any) -> dict[str, Any]:
    """Append one step to ``record`` (and return it)."""
    entry = {"time": time.time(), "step": name, **detail}
    record.setdefault("steps", []).append(entry)
    return entry
