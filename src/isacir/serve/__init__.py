"""HTTP service and operator web UI (``pip install isacir[serve]``; ``isacir serve``).

The exports load on first use: the command line's key management imports :mod:`.keys` at start-up,
and must not pull in the app, its models and torch for that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..feedback import FeedbackError, FeedbackStore
    from .app import create_app, load_service
    from .settings import ServeSettings, read_api_keys
    from .state import ServiceState

_EXPORTS = {
    "FeedbackError": "..feedback",
    "FeedbackStore": "..feedback",
    "ServeSettings": ".settings",
    "ServiceState": ".state",
    "create_app": ".app",
    "load_service": ".app",
    "read_api_keys": ".settings",
}

__all__ = [
    "FeedbackError",
    "FeedbackStore",
    "ServeSettings",
    "ServiceState",
    "create_app",
    "load_service",
    "read_api_keys",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isacir.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
