"""Progress that reads well on a terminal and in a log file.

On a terminal, a tqdm bar. Anywhere else (CI, ``docker logs``, ``2> file``) a bar's carriage-return
redraws pile up into hundreds of kilobytes, so the same calls print one plain line when the work
starts, at most one every ``interval_s`` seconds while it runs, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

#: Seconds between plain progress lines off a terminal.
LOG_INTERVAL_S = 30.0


class LogProgress:
    """The part of tqdm's interface the package uses, writing plain lines at a bounded rate."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        stream: IO[str] | None = None,
        interval_s: float = LOG_INTERVAL_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream or sys.stderr
        self.interval_s, self.clock = interval_s, clock
        self.postfix = ""
        self.start = self.last = clock()
        self.closed = False
        self._write("started")

    def _line(self, state: str) -> str:
        elapsed = self.clock() - self.start
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc or 'progress'}: {state} {done} {self.unit}, {elapsed:.0f} s{rate}{extra}"

    def _write(self, state: str) -> None:
        self.stream.write(self._line(state) + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self._write("at")

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write("done")

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    leave: bool = True,
    stream: IO[str] | None = None,
) -> Any:
    """A tqdm bar on a terminal; plain, rate-limited lines elsewhere; nothing when ``disable``."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    if disable:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)


def log_line(message: str, stream: IO[str] | None = None) -> None:
    """One line between progress bars (above a live tqdm bar on a terminal, plain elsewhere)."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        tqdm.write(message, file=stream)
    else:
        stream.write(message + "\n")
        stream.flush()
