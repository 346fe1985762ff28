"""HTTP service and operator web UI (``pip install isacir[serve]``; ``isacir serve``)."""

from ..feedback import FeedbackError, FeedbackStore
from .app import ServeSettings, ServiceState, create_app, load_service, read_api_keys

__all__ = [
    "FeedbackError",
    "FeedbackStore",
    "ServeSettings",
    "ServiceState",
    "create_app",
    "load_service",
    "read_api_keys",
]
