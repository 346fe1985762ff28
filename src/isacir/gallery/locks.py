"""A shared/exclusive lock for the live vector index.

Searches and persisting only read the index, so they share it; applying changes and swapping in a
rebuilt or reloaded index are exclusive. A waiting exclusive holder does not block new shared
ones: searches must never queue behind a long persist, and the exclusive sections here are short
(an in-memory apply or a pointer swap), so a writer waits at most for the searches in flight.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class SharedLock:
    """Many shared holders or one exclusive holder. Exclusive is re-entrant, and its holder may
    also take shared; a shared holder must not ask for exclusive (that would deadlock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._owner: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            while self._owner is not None and self._owner != me:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                while self._owner is not None or self._shared > 0:
                    self._cond.wait()
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()
