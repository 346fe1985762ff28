"""The service's writer of answered queries into the feedback store (group commit)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..feedback.store import FeedbackError, FeedbackStore, query_row
from .batching import MicroBatcher

log = logging.getLogger(__name__)


class QueryLog:
    """The service's writer of answered queries: group commit through one background thread.

    ``durable`` (the default): :meth:`log` returns once the row is committed with
    ``synchronous=FULL``, so a query id a client has seen survives a crash; rows that arrive within
    ``max_wait_s`` of each other share one commit and one fsync. ``async``: :meth:`log` returns at
    once and the row is committed in the next group; a crash loses the rows of the last few
    milliseconds, and a feedback call flushes first, so it always finds its query.
    """

    MODES = ("durable", "async")

    def __init__(
        self,
        store: FeedbackStore,
        mode: str = "durable",
        max_wait_s: float = 0.006,
        max_batch: int = 256,
        on_commit: Callable[[int], None] | None = None,
    ):
        if mode not in self.MODES:
            raise FeedbackError(f"query log mode must be durable or async, got {mode!r}")
        self.store, self.mode = store, mode
        self.commits = 0
        self.rows = 0
        self._on_commit = on_commit
        self._writer = MicroBatcher(self._commit, max_batch, max_wait_s, name="isacir-query-log")
        # Checkpoints (copying the WAL into the database, with fsyncs of their own) run on a thread
        # of their own: inside a commit they would stall every request waiting on that group.
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="isacir-query-log-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoints(self, every_s: float = 1.0) -> None:
        while not self._stop.wait(every_s):
            try:
                self.store.checkpoint()
            except Exception as exc:  # noqa: BLE001  (busy or locked: the next round catches up)
                log.debug("query-log checkpoint skipped: %s", exc)

    def _commit(self, rows: Sequence[tuple]) -> list[str]:
        if self.commits == 0:
            self.store.writer_setup()  # this thread's connection: see _checkpoints
        self.store.log_rows(rows)
        self.commits += 1
        self.rows += len(rows)
        if self._on_commit is not None:
            self._on_commit(len(rows))
        return [r[0] for r in rows]

    def log(self, *args: Any, **kwargs: Any) -> str:
        """Arguments as :func:`query_row`; returns the query id."""
        row = query_row(*args, **kwargs)
        fut = self._writer.submit(row)
        if self.mode == "durable":
            return fut.result()
        fut.add_done_callback(_report_lost)
        return row[0]

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()
        self._stop.set()
        self._checkpointer.join(10)


def _report_lost(fut: Future) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("query-log row lost (async mode): %s", exc)
