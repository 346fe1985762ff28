"""An append-only audit log: who changed a gallery (or, later, the models), when, and what.

One JSON object per line in ``GALLERY/audit.jsonl``. Each entry is appended with ``O_APPEND``
under an exclusive file lock and fsynced before the change is acknowledged, so the service and
the CLI can write to the same log, and an entry a client was told about survives a crash. A torn
last line (a kill during the write) is skipped when reading, never fatal.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.jsonl"


def cli_actor() -> str:
    """Who runs a CLI command: ``cli:<login>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001  (no login name in some containers)
        return f"cli:uid{os.getuid()}"


class AuditLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def of_gallery(cls, gallery_dir: str | os.PathLike) -> AuditLog:
        return cls(Path(gallery_dir) / AUDIT_FILE)

    def record(self, actor: str, action: str, **details: Any) -> dict:
        """Append one entry and make it durable; returns it."""
        entry = {"time": time.time(), "actor": actor, "action": action, **details}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for raw in self.path.read_bytes().splitlines():
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a line torn by a crash mid-write
            if isinstance(entry, dict):
                out.append(entry)
        return out
