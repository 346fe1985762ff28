"""The query log and operator feedback: what every search answered and what operators said of it.

Below both the service (which writes it) and the adapter trainer (which learns from it), so that
neither has to import the other. SQLite by default, PostgreSQL for service replicas.
"""

from .postgres import PostgresFeedbackStore, is_postgres_url, open_store
from .store import SCHEMA_VERSION, VERDICTS, FeedbackError, FeedbackStore, query_row, served_version
from .triplets import export_triplets, learnable

__all__ = [
    "SCHEMA_VERSION",
    "VERDICTS",
    "FeedbackError",
    "FeedbackStore",
    "PostgresFeedbackStore",
    "export_triplets",
    "is_postgres_url",
    "learnable",
    "open_store",
    "query_row",
    "served_version",
]
