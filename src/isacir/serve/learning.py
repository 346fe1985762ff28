"""The learning loop inside the service: a background job that runs cycle steps, and runs them now
on request.

The serving path never imports training: the loop arrives from outside as any object with
``tick(start, reason)`` and ``status()`` (``isacir serve --learn-policy`` passes an
:class:`isacir.cycle.LearningCycle`). Steps run on one thread of their own, never on a request:
a request that starts a cycle is answered at once, and the console reads the progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import IsacirError

log = logging.getLogger("isacir.learning")


class LearningLoop(Protocol):
    def tick(self, start: bool = False, reason: str = "") -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


class BackgroundLearner:
    """Runs ``loop.tick()`` every ``every_s`` seconds, and once more on :meth:`request`.

    ``after`` is called after each step that changed something (the service reloads its
    registry). A step that fails is logged and kept in :attr:`last`; the next one tries again.
    """

    def __init__(self, loop: LearningLoop, every_s: float = 300.0, after: Callable[[], Any] | None = None):
        if every_s <= 0:
            raise IsacirError(f"--learn-every must be positive, got {every_s}")
        self.loop, self.every_s, self.after = loop, every_s, after
        self.last: dict[str, Any] | None = None
        self.running = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: tuple[bool, str, str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="isacir-learning", daemon=True)

    def start(self) -> BackgroundLearner:
        self._thread.start()
        return self

    def request(self, start: bool, reason: str, actor: str) -> bool:
        """Run a step now (``start``: begin a cycle whatever the trigger says). False when a step
        is already running or asked for."""
        with self._lock:
            if self.running or self._pending is not None:
                return False
            self._pending = (start, reason, actor)
        self._wake.set()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                start, reason, actor = self._pending or (False, "", "")
                self._pending = None
                self.running = True
            t0 = time.time()
            try:
                result = self.loop.tick(start=start, reason=reason)
                self.last = {"time": t0, "took_s": round(time.time() - t0, 1), "by": actor or "schedule",
                             "action": result["action"], "cycle": (result.get("cycle") or {}).get("id"),
                             "reason": result.get("reason")}  # fmt: skip
                if result["action"] != "none" and self.after is not None:
                    self.after()
            except Exception as exc:  # noqa: BLE001  (a failed step is reported; the service goes on)
                log.error("learning cycle step failed: %s", exc)
                self.last = {"time": t0, "by": actor or "schedule", "error": str(exc)}
            finally:
                self.running = False

    def describe(self) -> dict[str, Any]:
        return {"every_s": self.every_s, "running": self.running, "last": self.last, "status": self.loop.status()}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
