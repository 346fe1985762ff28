"""The query log and operator feedback in PostgreSQL, so several service replicas share them.

Same tables, same rules and same answers as the SQLite store (:class:`FeedbackStore`): only the
connection, the placeholders and the DDL differ. Connections come from a psycopg pool; each
write is its own transaction, committed before the call returns. Schema creation takes a
transaction-level advisory lock, so replicas that start together do not race.

    isacir serve ... --feedback-db postgresql://isacir@db.internal/isacir
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .store import SCHEMA_VERSION, FeedbackError, FeedbackStore

URL_PREFIXES = ("postgresql://", "postgres://")
_LOCK_KEY = 0x1CAC1A  # the advisory lock that serialises schema creation across replicas

_TABLES = """
CREATE TABLE IF NOT EXISTS isacir_feedback_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL,
    mode TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens BYTEA,
    query_encoder_fingerprint TEXT,
    foundation_fingerprint TEXT,
    k INTEGER NOT NULL,
    results TEXT NOT NULL,
    latency_ms DOUBLE PRECISION,
    adapter_fingerprint TEXT,
    model_version TEXT,
    interleave TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id BIGSERIAL PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    candidate_id BIGINT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected', 'corrected')),
    created DOUBLE PRECISION NOT NULL,
    note TEXT,
    in_results BOOLEAN NOT NULL DEFAULT TRUE,
    verdict_s DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
CREATE INDEX IF NOT EXISTS queries_created ON queries(created);
CREATE TABLE IF NOT EXISTS review (
    query_id TEXT PRIMARY KEY,
    score DOUBLE PRECISION NOT NULL,
    probability DOUBLE PRECISION NOT NULL,
    uniform INTEGER NOT NULL,
    reasons TEXT,
    created DOUBLE PRECISION NOT NULL,
    leased_to TEXT,
    lease_until DOUBLE PRECISION,
    done DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS review_open ON review(done, created)
"""

# Columns added after the first schema: a database created by an older isacir gains them in place.
_ADDED_COLUMNS = """
ALTER TABLE queries ADD COLUMN IF NOT EXISTS adapter_fingerprint TEXT;
ALTER TABLE queries ADD COLUMN IF NOT EXISTS model_version TEXT;
ALTER TABLE queries ADD COLUMN IF NOT EXISTS interleave TEXT;
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS verdict_s DOUBLE PRECISION
"""


def is_postgres_url(spec: str) -> bool:
    return str(spec).startswith(URL_PREFIXES)


def _pg(sql: str) -> str:
    """The store's SQL is written with ``?`` placeholders; psycopg takes ``%s``."""
    return sql.replace("?", "%s")


class PostgresFeedbackStore(FeedbackStore):
    _SKIP_LOCKED = " FOR UPDATE OF r SKIP LOCKED"

    def __init__(self, url: str, max_connections: int = 10, connect_timeout: float = 15.0):
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover
            raise FeedbackError("PostgreSQL needs psycopg: pip install 'isacir[postgres]'") from exc
        import psycopg

        self.url = url
        self._psycopg = psycopg
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=False, timeout=30)
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:  # noqa: BLE001  (a refused connection becomes one clear error)
            self.pool.close()
            raise FeedbackError(
                f"cannot connect to the feedback database {self.location} within {connect_timeout:g} s: {exc}", 500
            ) from None
        self._migrate()

    @property
    def location(self) -> str:
        """The URL without its password (for logs and errors)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.url

    def _migrate(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for statement in _TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT version FROM isacir_feedback_schema").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise FeedbackError(
                    f"{self.location} has feedback schema {row[0]}, newer than this isacir reads ({SCHEMA_VERSION})",
                    500,
                )
            for statement in _ADDED_COLUMNS.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO isacir_feedback_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] < SCHEMA_VERSION:
                conn.execute("UPDATE isacir_feedback_schema SET version = %s", (SCHEMA_VERSION,))

    def _insert_many(self, sql: str, rows: Sequence[tuple]) -> None:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)

    def _fetchall(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self.pool.connection() as conn:
            return conn.execute(_pg(sql), tuple(args)).fetchall()

    def _execute(self, sql: str, args: Sequence = ()) -> int:
        with self.pool.connection() as conn, conn.transaction():
            return int(conn.execute(_pg(sql), tuple(args)).rowcount)

    def _insert_feedback(self, row: tuple) -> int:
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "INSERT INTO feedback (query_id, candidate_id, verdict, created, note, in_results, verdict_s) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING feedback_id",
                row,
            )
            found = cur.fetchone()
            return int(found[0]) if found else 0

    def check_writable(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")
            standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if standby is not None and standby[0]:
                raise FeedbackError(f"{self.location} is a read-only standby", 503)

    def writer_setup(self) -> None:
        pass  # the server runs its own checkpoints

    def checkpoint(self) -> None:
        pass

    def db(self) -> Any:
        raise FeedbackError("the PostgreSQL store has no SQLite connection; use its methods")

    def close(self) -> None:
        self.pool.close()


def open_store(spec: str | Any) -> FeedbackStore:
    """A ``postgresql://`` URL or a SQLite file path."""
    if is_postgres_url(str(spec)):
        return PostgresFeedbackStore(str(spec))
    return FeedbackStore(spec)
