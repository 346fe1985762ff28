"""Durable query log and operator feedback, kept for continual learning.

Every search the service answers is logged with what is needed to learn from it later: the
pseudo tokens (as the payload bytes that travelled, or that the server computed), the modifier
text, the served fingerprints and the returned candidates. Feedback rows point at a logged query,
so a confirmation is a (tokens, text, target image) triplet with no photo ever stored. SQLite in
WAL mode with synchronous=FULL: a committed row survives a crash of the process or the machine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..errors import IsacirError

VERDICTS = ("confirmed", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    mode TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens BLOB,
    query_encoder_fingerprint TEXT,
    foundation_fingerprint TEXT,
    k INTEGER NOT NULL,
    results TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    candidate_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected')),
    created REAL NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
"""


class FeedbackError(IsacirError):
    """A feedback row that cannot be stored; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class FeedbackStore:
    """One SQLite file; a connection per thread (the web server answers from a thread pool)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.db().executescript(_SCHEMA)

    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def log_query(
        self,
        mode: str,
        text: str,
        tokens: bytes | None,
        k: int,
        results: list[int],
        query_encoder_fingerprint: str | None,
        foundation_fingerprint: str,
    ) -> str:
        query_id = uuid.uuid4().hex
        self.db().execute(
            "INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                query_id,
                time.time(),
                mode,
                text,
                tokens,
                query_encoder_fingerprint,
                foundation_fingerprint,
                k,
                json.dumps(results),
            ),
        )
        return query_id

    def add(self, query_id: str, candidate_id: int, verdict: str, note: str | None = None) -> int:
        if verdict not in VERDICTS:
            raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        db = self.db()
        row = db.execute("SELECT results FROM queries WHERE query_id = ?", (query_id,)).fetchone()
        if row is None:
            raise FeedbackError(
                f"unknown query_id {query_id!r}: feedback must refer to a search this server answered", 404
            )
        if candidate_id not in json.loads(row[0]):
            raise FeedbackError(f"candidate {candidate_id} was not among the results of query {query_id}", 422)
        cur = db.execute(
            "INSERT INTO feedback (query_id, candidate_id, verdict, created, note) VALUES (?, ?, ?, ?, ?)",
            (query_id, candidate_id, verdict, time.time(), note),
        )
        return int(cur.lastrowid)

    def rows(self, query_id: str | None = None) -> list[dict]:
        """Feedback joined with its query (tokens as payload bytes), oldest first."""
        sql = (
            "SELECT f.feedback_id, f.query_id, f.candidate_id, f.verdict, f.created, q.text, q.mode, q.tokens, "
            "q.query_encoder_fingerprint FROM feedback f JOIN queries q USING (query_id)"
        )
        args: tuple = ()
        if query_id is not None:
            sql += " WHERE f.query_id = ?"
            args = (query_id,)
        keys = (
            "feedback_id",
            "query_id",
            "candidate_id",
            "verdict",
            "created",
            "text",
            "mode",
            "tokens",
            "query_encoder_fingerprint",
        )
        return [dict(zip(keys, r, strict=True)) for r in self.db().execute(sql + " ORDER BY f.feedback_id", args)]

    def counts(self) -> dict[str, int]:
        db = self.db()
        out = {"queries": db.execute("SELECT COUNT(*) FROM queries").fetchone()[0]}
        for verdict, n in db.execute("SELECT verdict, COUNT(*) FROM feedback GROUP BY verdict"):
            out[verdict] = n
        return out

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
