"""Work that concurrent requests hand to one background thread, done in groups.

Two uses in the service, one mechanism:

- composed text encodes: a transformer runs a batch of 8 queries in much less than 8 times the
  time of one, so requests that arrive within a few milliseconds share one forward pass;
- the query log: SQLite in ``synchronous=FULL`` pays one fsync per commit, so rows that arrive
  together share one commit (group commit), and the tail no longer follows the disk.

A request thread calls :meth:`MicroBatcher.submit` and blocks until its own item is done. The
worker takes the first waiting item, gathers more until ``max_batch`` or ``max_wait_s`` after the
first, and runs ``fn`` once on the group. When the group fails, each member is retried alone, so
one bad request fails only itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item ran."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 16,
        max_wait_s: float = 0.003,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
        wait_ratio: float | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.fn, self.max_batch, self.max_wait_s, self.on_batch = fn, max_batch, max_wait_s, on_batch
        #: wait at most this fraction of a typical group's run time (None: always ``max_wait_s``).
        #: Waiting buys batch size at the price of latency; it pays only when a group's work costs
        #: much more than the wait, so a cheap model batches little and an expensive one a lot.
        self.wait_ratio = wait_ratio
        self._typical_s: float | None = None
        # queue.Queue, not SimpleQueue: CPython 3.11's SimpleQueue.get(timeout=t) can block for
        # ever when the thread is descheduled inside the call for longer than t (the time left
        # turns negative, and a negative wait on its lock means "no limit"; 3.13 rewrote it).
        # With the short gathering waits used here that happened under load, and a search
        # waited on a group that never ran. Queue waits through a Condition, whose lock
        # handles an elapsed deadline.
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._pending = 0
        self._idle = threading.Condition()
        # Several workers keep several cores busy when one group's work runs on one core (torch
        # releases the GIL); each worker gathers and runs its own group.
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self._gather = threading.Lock()
        for t in self._threads:
            t.start()

    def submit(self, item: T) -> Future:
        """Queue one item; the future holds its result (or its own exception)."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        fut: Future = Future()
        with self._idle:
            self._pending += 1
        self._queue.put((item, fut))
        return fut

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit and wait: what a request thread does."""
        return self.submit(item).result(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def pending(self) -> int:
        return self._pending

    def _run(self) -> None:
        while True:
            with self._gather:  # one worker gathers at a time, so groups fill before the next starts
                first = self._queue.get()
                if first is _STOP:
                    return
                group = [first]
                stop = False
                deadline = time.monotonic() + self.current_wait_s()
                while len(group) < self.max_batch:
                    left = deadline - time.monotonic()
                    try:
                        nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    group.append(nxt)
            self._run_group(group)
            if stop:
                return

    def current_wait_s(self) -> float:
        if self.wait_ratio is None or self._typical_s is None:
            return self.max_wait_s
        return min(self.max_wait_s, self.wait_ratio * self._typical_s)

    def _run_group(self, group: list) -> None:
        items = [item for item, _ in group]
        t0 = time.perf_counter()
        try:
            results = list(self.fn(items))
            took = time.perf_counter() - t0
            # a moving average of the group's run time, which grows with the model and the batch
            self._typical_s = took if self._typical_s is None else 0.8 * self._typical_s + 0.2 * took
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            outcomes: list = [(r, None) for r in results]
            if self.on_batch is not None:
                self.on_batch(len(items))
        except BaseException:  # noqa: BLE001  (each member gets its own outcome below)
            outcomes = []
            for item in items:
                try:
                    (r,) = self.fn([item])
                    outcomes.append((r, None))
                    if self.on_batch is not None:
                        self.on_batch(1)
                except BaseException as exc:  # noqa: BLE001
                    outcomes.append((None, exc))
        for (_, fut), (result, exc) in zip(group, outcomes, strict=True):
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        with self._idle:
            self._pending -= len(group)
            self._idle.notify_all()
