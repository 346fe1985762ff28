"""A locked ledger: one JSON state file, rewritten whole under an OS lock, with its event history.

The model registry (versions and their states) and the gallery generations (blue/green foundation
upgrades) are the same mechanism: a small document that several commands and a running service
read, that writers change one at a time, and whose every change is recorded as an event. Both use
this one primitive, so both get the same guarantees:

- a writer holds an exclusive ``flock`` on a lock file beside the state while it reads, changes and
  writes, so two commands never lose each other's change;
- the state is replaced atomically (temp file, fsync, rename, fsync of the folder), so a reader or
  a crash sees the old document or the new one, never a mix;
- :meth:`Ledger.stamp` changes on every write, so a service can notice a change with one ``stat``.

Why not SQLite: the document is tiny, people read it and diff it, and backups copy it as a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._fs import atomic_write_text
from .errors import IsacirError

#: the names of ledger entries (model versions, gallery generations): they become folder names
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENTRY_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class Ledger:
    """The state file ``path`` with writers serialised on ``lock``.

    ``missing`` gives the state when the file does not exist yet; ``check`` validates a state read
    from disk (raising ``error``); ``error`` is the :class:`~isacir.errors.IsacirError` subclass
    raised for a file that is not valid JSON.
    """

    def __init__(
        self,
        path: Path,
        lock: Path,
        missing: Callable[[], dict[str, Any]],
        error: type[IsacirError],
        check: Callable[[dict[str, Any], Path], None] | None = None,
    ):
        self.path, self.lock = Path(path), Path(lock)
        self._missing, self._error, self._check = missing, error, check

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return self._missing()
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise self._error(f"{self.path} is not valid JSON ({exc}); it is only ever replaced whole") from None
        if not isinstance(data, dict):
            raise self._error(f"{self.path} is not a JSON object; it is only ever replaced whole")
        if self._check is not None:
            self._check(data, self.path)
        return data

    @contextlib.contextmanager
    def writing(self) -> Iterator[dict[str, Any]]:
        """The state under the lock; what the block leaves in the dict is written atomically (an
        exception inside the block writes nothing)."""
        folder = self.lock.parent
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.lock, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self.read()
                yield data
                atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")
        except BaseException:
            if created:  # a refused first change leaves no empty folder behind
                with contextlib.suppress(OSError):
                    if [p.name for p in folder.iterdir()] == [self.lock.name]:
                        self.lock.unlink()
                        folder.rmdir()
            raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[dict[str, Any]]:
        """The state under a shared lock: writers wait until the block ends, readers do not. For
        copying the state together with the files it names (a backup) without a writer between."""
        if not self.lock.parent.is_dir():
            yield self.read()
            return
        with open(self.lock, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            yield self.read()

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes whenever the state file is replaced (every write replaces it)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def event(subject: str, name: str, before: str | None, after: str, actor: str, reason: str) -> dict[str, Any]:
    """One history entry: ``name`` (a ``subject``: version or generation) went ``before`` -> ``after``."""
    return {"time": time.time(), subject: name, "from": before, "to": after, "actor": actor, "reason": reason}


def check_name(name: str, what: str, error: type[IsacirError]) -> None:
    """Refuse a name that cannot be an entry (and a folder): ``what`` says which kind of entry."""
    if not isinstance(name, str) or not ENTRY_NAME.match(name):
        raise error(f"{what} name {name!r}: {ENTRY_NAME_RULE}")
