"""Hold back third-party log chatter while a model loads, and keep it for the error message.

A failed download makes the hub client and open_clip print a dozen retry and error lines before
our own explanation. While loading, their records are buffered; on success they are dropped, on
failure the last one is quoted in the single error the user sees.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_LOGGERS = ("", "huggingface_hub", "transformers", "open_clip", "timm")


class _Buffer(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # never let logging break loading
            pass


@contextlib.contextmanager
def captured_library_logs() -> Iterator[list[str]]:
    buffer = _Buffer()
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [buffer]
        logger.propagate = False
    try:
        yield buffer.messages
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


def last_error(messages: list[str], limit: int = 300) -> str:
    """The most informative captured line, shortened."""
    for msg in reversed(messages):
        if msg.strip():
            msg = " ".join(msg.split())
            return msg if len(msg) <= limit else msg[: limit - 3] + "..."
    return ""
