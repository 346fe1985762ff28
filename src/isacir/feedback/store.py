"""Durable query log and operator feedback, kept for continual learning.

Every search the service answers is logged with what is needed to learn from it later: the
pseudo tokens (as the payload bytes that travelled, or that the server computed), the modifier
text, the served fingerprints, the returned candidates and the time it took. Feedback rows point
at a logged query, so a confirmation or a correction is a (tokens, text, target image) triplet
with no photo ever stored. SQLite in WAL mode with synchronous=FULL: a committed row survives a
crash of the process or the machine.

Verdicts:

- ``confirmed``: a returned candidate is the right item;
- ``rejected``: a returned candidate is wrong;
- ``corrected``: the right item is ``correct_id``, any gallery item, found by the operator
  whether or not the search returned it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import IsacirError

log = logging.getLogger(__name__)
VERDICTS = ("confirmed", "rejected", "corrected")
#: The on-disk layout; older files are migrated in place, in one transaction, when opened.
SCHEMA_VERSION = 5

_TABLES = """
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    mode TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens BLOB,
    query_encoder_fingerprint TEXT,
    foundation_fingerprint TEXT,
    k INTEGER NOT NULL,
    results TEXT NOT NULL,
    latency_ms REAL,
    adapter_fingerprint TEXT,
    model_version TEXT,
    interleave TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    candidate_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected', 'corrected')),
    created REAL NOT NULL,
    note TEXT,
    in_results INTEGER NOT NULL DEFAULT 1,
    verdict_s REAL
);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
CREATE INDEX IF NOT EXISTS queries_created ON queries(created);
"""

# The review queue (see :mod:`.review`): queries drawn for review, each with the probability it was
# drawn with. No foreign key: with the asynchronous query log the row may precede its query's commit,
# and a query becomes leasable once both are there.
_REVIEW = """
CREATE TABLE IF NOT EXISTS review (
    query_id TEXT PRIMARY KEY,
    score REAL NOT NULL,
    probability REAL NOT NULL,
    uniform INTEGER NOT NULL,
    reasons TEXT,
    created REAL NOT NULL,
    leased_to TEXT,
    lease_until REAL,
    done REAL
);
CREATE INDEX IF NOT EXISTS review_open ON review(done, created)
"""
_TABLES += _REVIEW

# Version 1 (no user_version set): verdicts confirmed | rejected only, no latency, no in_results.
_FROM_V1 = """
ALTER TABLE queries ADD COLUMN latency_ms REAL;
CREATE TABLE feedback_v2 (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    candidate_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected', 'corrected')),
    created REAL NOT NULL,
    note TEXT,
    in_results INTEGER NOT NULL DEFAULT 1
);
INSERT INTO feedback_v2 (feedback_id, query_id, candidate_id, verdict, created, note, in_results)
    SELECT feedback_id, query_id, candidate_id, verdict, created, note, 1 FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_v2 RENAME TO feedback;
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
CREATE INDEX IF NOT EXISTS queries_created ON queries(created);
"""


# Version 2: no adapter column (queries were always served without a feedback-trained adapter).
_FROM_V2 = """
ALTER TABLE queries ADD COLUMN adapter_fingerprint TEXT;
"""

# Version 3: no registry version name and no interleaving record (one version was served at a time).
_FROM_V3 = """
ALTER TABLE queries ADD COLUMN model_version TEXT;
ALTER TABLE queries ADD COLUMN interleave TEXT;
"""

# Version 4: no review queue, and no record of how long an operator took over a verdict.
_FROM_V4 = (
    _REVIEW
    + """;
ALTER TABLE feedback ADD COLUMN verdict_s REAL
"""
)


def served_version(query_encoder_fingerprint: str | None, adapter_fingerprint: str | None) -> str:
    """The version a query was answered by: the query encoder, plus the adapter when one served."""
    base = query_encoder_fingerprint or "unknown"
    return f"{base}+{adapter_fingerprint}" if adapter_fingerprint else base


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
        self._migrate()

    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _migrate(self) -> None:
        """Create or upgrade the schema in one write transaction (a second opener waits, then sees it done)."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            has_feedback = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback'"
            ).fetchone()
            if version > SCHEMA_VERSION:
                raise FeedbackError(
                    f"{self.path} has feedback schema {version}, newer than this isacir reads ({SCHEMA_VERSION})", 500
                )
            if version < SCHEMA_VERSION:
                if has_feedback:
                    steps = (
                        ([_FROM_V1] if version < 2 else [])
                        + ([_FROM_V2] if version < 3 else [])
                        + ([_FROM_V3] if version < 4 else [])
                        + [_FROM_V4]
                    )
                else:
                    steps = [_TABLES]
                for script in steps:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def log_query(self, *args: Any, **kwargs: Any) -> str:
        """Store one answered query now (its own commit); arguments as :func:`query_row`. Returns its id."""
        row = query_row(*args, **kwargs)
        self.log_rows([row])
        return row[0]

    def log_rows(self, rows: Sequence[tuple]) -> None:
        """Store rows from :func:`query_row` in one transaction: one fsync for all of them."""
        self._insert_many(
            "INSERT INTO queries (query_id, created, mode, text, tokens, query_encoder_fingerprint, "
            "foundation_fingerprint, k, results, latency_ms, adapter_fingerprint, model_version, interleave) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    # ----- the few operations a backend provides ----------------------------------------------
    def _insert_many(self, sql: str, rows: Sequence[tuple]) -> None:
        """All rows in one transaction (one fsync)."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _fetchall(self, sql: str, args: Sequence = ()) -> list[tuple]:
        return self.db().execute(sql, tuple(args)).fetchall()

    def _execute(self, sql: str, args: Sequence = ()) -> int:
        """One statement in its own transaction; returns the rows it changed."""
        return int(self.db().execute(sql, tuple(args)).rowcount)

    def _insert_feedback(self, row: tuple) -> int:
        cur = self.db().execute(
            "INSERT INTO feedback (query_id, candidate_id, verdict, created, note, in_results, verdict_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        return int(cur.lastrowid or 0)

    def check_writable(self) -> None:
        """Raise unless a write transaction can start now (the readiness probe)."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    def writer_setup(self) -> None:
        """Called once on the query-log writer's thread: its commits never run a WAL checkpoint."""
        self.db().execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL into the database, off the commit path (see :class:`QueryLog`)."""
        self.db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @property
    def location(self) -> str:
        return str(self.path)

    def add(
        self,
        query_id: str,
        candidate_id: int,
        verdict: str,
        note: str | None = None,
        in_gallery: Callable[[int], bool] | None = None,
        created: float | None = None,
        verdict_s: float | None = None,
    ) -> int:
        """Store one verdict. For ``corrected``, ``candidate_id`` is the right item (any gallery id:
        ``in_gallery`` checks it); otherwise it must be one of the query's results. ``verdict_s``:
        the seconds from the results shown to this verdict, as the operator's client measured them."""
        if verdict not in VERDICTS:
            raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        found = self._fetchall("SELECT results FROM queries WHERE query_id = ?", (query_id,))
        row = found[0] if found else None
        if row is None:
            raise FeedbackError(
                f"unknown query_id {query_id!r}: feedback must refer to a search this server answered", 404
            )
        returned = candidate_id in json.loads(row[0])
        if verdict == "corrected":
            if in_gallery is not None and not in_gallery(candidate_id):
                raise FeedbackError(f"correct_id {candidate_id} is not an item of the gallery", 422)
        elif not returned:
            raise FeedbackError(f"candidate {candidate_id} was not among the results of query {query_id}", 422)
        if verdict_s is not None and not 0 <= verdict_s <= 86400:
            raise FeedbackError(f"verdict_s must be within 0..86400 seconds, got {verdict_s}", 422)
        feedback_id = self._insert_feedback(
            (query_id, candidate_id, verdict, time.time() if created is None else created, note, returned, verdict_s)
        )
        self._execute("UPDATE review SET done = ? WHERE query_id = ? AND done IS NULL", (time.time(), query_id))
        return feedback_id

    # ----- the review queue (see :mod:`.review`) --------------------------------------------------
    #: how a lease skips rows another transaction is leasing (PostgreSQL); SQLite writes one at a time
    _SKIP_LOCKED = ""

    def enqueue_review(
        self, query_id: str, score: float, probability: float, uniform: bool, reasons: dict | None = None
    ) -> None:
        """Put an answered query in the review queue (once: a second call changes nothing)."""
        self._execute(
            "INSERT INTO review (query_id, score, probability, uniform, reasons, created) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (query_id) DO NOTHING",
            (query_id, float(score), float(probability), int(uniform), json.dumps(reasons or {}), time.time()),
        )

    def lease_review(
        self, holder: str, lease_s: float, now: float | None = None, skip: str | None = None
    ) -> dict[str, Any] | None:
        """Hand the oldest open query to ``holder`` for ``lease_s`` seconds, never to two holders at
        once; the holder's own unexpired lease comes back first. ``skip``: a query this holder gives
        back and does not want again now. None when nothing is open."""
        now = time.time() if now is None else now
        if skip is not None:
            self.release_review(skip, holder)
        mine = self._fetchall(
            "SELECT query_id FROM review WHERE leased_to = ? AND lease_until > ? AND done IS NULL "
            "AND query_id <> ? ORDER BY created, query_id LIMIT 1",
            (holder, now, skip or ""),
        )
        qid = mine[0][0] if mine else None
        open_row = "{t}done IS NULL AND ({t}lease_until IS NULL OR {t}lease_until <= ?) AND {t}query_id <> ?"
        outer, inner = open_row.format(t=""), open_row.format(t="r.")
        for _ in range(8 if qid is None else 0):  # another holder may take the same row first: next one
            got = self._fetchall(
                f"UPDATE review SET leased_to = ?, lease_until = ? WHERE {outer} AND query_id = ("  # noqa: S608
                f"SELECT r.query_id FROM review r JOIN queries q ON q.query_id = r.query_id WHERE {inner} "
                f"ORDER BY r.created, r.query_id LIMIT 1{self._SKIP_LOCKED}) RETURNING query_id",
                (holder, now + lease_s, now, skip or "", now, skip or ""),
            )
            if got:
                qid = got[0][0]
                break
            if not self._fetchall(f"SELECT 1 FROM review WHERE {outer} LIMIT 1", (now, skip or "")):  # noqa: S608
                return None
        if qid is None:
            return None
        row = self._fetchall(
            "SELECT r.query_id, r.score, r.reasons, r.lease_until, q.text, q.mode, q.results, q.created, "
            "q.model_version FROM review r JOIN queries q ON q.query_id = r.query_id WHERE r.query_id = ?",
            (qid,),
        )[0]
        keys = ("query_id", "score", "reasons", "lease_until", "text", "mode", "results", "created", "model_version")
        out = dict(zip(keys, row, strict=True))
        out["reasons"] = json.loads(out["reasons"] or "{}")
        out["results"] = json.loads(out["results"])
        return out

    def release_review(self, query_id: str, holder: str) -> bool:
        """Give a leased query back (an operator who skips it); True when ``holder`` held it."""
        return (
            self._execute(
                "UPDATE review SET leased_to = NULL, lease_until = NULL WHERE query_id = ? AND leased_to = ? "
                "AND done IS NULL",
                (query_id, holder),
            )
            > 0
        )

    def judged_texts(self) -> list[str]:
        """The modifier of every query with a verdict, once each."""
        return [
            t
            for (t,) in self._fetchall(
                "SELECT DISTINCT q.text FROM feedback f JOIN queries q ON q.query_id = f.query_id"
            )
        ]

    def review_items(self) -> list[dict[str, Any]]:
        """Every query drawn for review, with its draw probability, oldest first."""
        keys = ("query_id", "score", "probability", "uniform", "created", "done")
        rows = self._fetchall(
            "SELECT query_id, score, probability, uniform, created, done FROM review ORDER BY created, query_id"
        )
        return [{**dict(zip(keys, r, strict=True)), "uniform": bool(r[3])} for r in rows]

    def logged_query(self, query_id: str) -> dict[str, Any] | None:
        """One logged query as it was answered (tokens as payload bytes), or None."""
        keys = ("query_id", "created", "mode", "text", "tokens", "k", "results", "model_version")
        found = self._fetchall(
            "SELECT query_id, created, mode, text, tokens, k, results, model_version FROM queries WHERE query_id = ?",
            (query_id,),
        )
        if not found:
            return None
        q = dict(zip(keys, found[0], strict=True))
        q["tokens"] = bytes(q["tokens"]) if q["tokens"] is not None else None
        q["results"] = json.loads(q["results"])
        return q

    def answered_by(self, query_id: str) -> str | None:
        """The version that answered a logged query (:func:`served_version`), or None if unknown."""
        found = self._fetchall(
            "SELECT query_encoder_fingerprint, adapter_fingerprint FROM queries WHERE query_id = ?", (query_id,)
        )
        return served_version(found[0][0], found[0][1]) if found else None

    def rows(self, query_id: str | None = None) -> list[dict]:
        """Feedback joined with its query (tokens as payload bytes), oldest first."""
        sql = (
            "SELECT f.feedback_id, f.query_id, f.candidate_id, f.verdict, f.created, f.in_results, q.text, q.mode, "
            "q.tokens, q.query_encoder_fingerprint FROM feedback f JOIN queries q USING (query_id)"
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
            "in_results",
            "text",
            "mode",
            "tokens",
            "query_encoder_fingerprint",
        )
        out = [dict(zip(keys, r, strict=True)) for r in self._fetchall(sql + " ORDER BY f.feedback_id", args)]
        for row in out:
            row["in_results"] = bool(row["in_results"])
        return out

    def queries(self, since: float | None = None, until: float | None = None) -> Iterator[dict[str, Any]]:
        """Every logged query with its verdicts, oldest first (what learning and the pilot read)."""
        where, args = [], []
        if since is not None:
            where.append("q.created >= ?")
            args.append(since)
        if until is not None:
            where.append("q.created < ?")
            args.append(until)
        window = " WHERE " + " AND ".join(where) if where else ""
        sql = (
            "SELECT q.query_id, q.created, q.mode, q.text, q.tokens, q.query_encoder_fingerprint, "
            "q.foundation_fingerprint, q.k, q.results, q.latency_ms, q.adapter_fingerprint, q.model_version, "
            "q.interleave FROM queries q" + window + " ORDER BY q.created, q.query_id"
        )
        verdicts: dict[str, list[dict]] = {}
        # only the verdicts of queries in the window: a summary of one week must not read the whole log
        for qid, cand, verdict, created, in_results, verdict_s in self._fetchall(
            "SELECT f.query_id, f.candidate_id, f.verdict, f.created, f.in_results, f.verdict_s FROM feedback f "
            "JOIN queries q USING (query_id)" + window + " ORDER BY f.feedback_id",
            args,
        ):
            verdicts.setdefault(qid, []).append(
                {
                    "candidate_id": cand,
                    "verdict": verdict,
                    "created": created,
                    "in_results": bool(in_results),
                    "verdict_s": verdict_s,
                }
            )
        keys = (
            "query_id",
            "created",
            "mode",
            "text",
            "tokens",
            "query_encoder_fingerprint",
            "foundation_fingerprint",
            "k",
            "results",
            "latency_ms",
            "adapter_fingerprint",
            "model_version",
            "interleave",
        )
        for row in self._fetchall(sql, args):
            q = dict(zip(keys, row, strict=True))
            if isinstance(q["tokens"], memoryview):
                q["tokens"] = bytes(q["tokens"])
            q["version"] = served_version(q["query_encoder_fingerprint"], q["adapter_fingerprint"])
            q["results"] = json.loads(q["results"])
            q["interleave"] = json.loads(q["interleave"]) if q["interleave"] else None
            q["verdicts"] = verdicts.get(q["query_id"], [])
            yield q

    def prune(self, older_than_days: float, now: float | None = None, dry_run: bool = False) -> int:
        """Drop the payload tokens of queries older than the cut-off that have no verdict.

        The rows stay (text, results, fingerprints, latency), so pilot counts and rates do not
        change; only the pseudo tokens, the one thing derived from a user's photo, go. Queries
        with a verdict keep their tokens: they are the training triplets. Returns how many.
        """
        if older_than_days < 0:
            raise FeedbackError(f"retention must not be negative, got {older_than_days} days")
        cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
        where = (
            "tokens IS NOT NULL AND created < ? AND NOT EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.query_id = queries.query_id)"
        )
        if dry_run:
            return int(self._fetchall(f"SELECT COUNT(*) FROM queries WHERE {where}", (cutoff,))[0][0])
        return self._execute(f"UPDATE queries SET tokens = NULL WHERE {where}", (cutoff,))

    def counts(self) -> dict[str, int]:
        return log_counts(self._fetchall)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def log_counts(fetchall: Callable[[str], list[tuple]]) -> dict[str, int]:
    """Logged queries and verdicts by kind, through any connection's ``fetchall(sql)`` (a backup
    counts its read-only copy with it, without opening it as a store, which would migrate it)."""
    out = {"queries": int(fetchall("SELECT COUNT(*) FROM queries")[0][0])}
    for verdict, n in fetchall("SELECT verdict, COUNT(*) FROM feedback GROUP BY verdict"):
        out[verdict] = n
    return out


def query_row(
    mode: str,
    text: str,
    tokens: bytes | None,
    k: int,
    results: list[int],
    query_encoder_fingerprint: str | None,
    foundation_fingerprint: str,
    latency_ms: float | None = None,
    created: float | None = None,
    adapter_fingerprint: str | None = None,
    model_version: str | None = None,
    interleave: dict | None = None,
    query_id: str | None = None,
) -> tuple:
    """One row of the ``queries`` table, its query id (fresh unless given) first.

    ``model_version`` is the registry version that answered; ``interleave`` records a team-draft
    comparison (``{"A": version, "B": version, "teams": {item id: "A" or "B"}}``)."""
    return (
        query_id or uuid.uuid4().hex,
        time.time() if created is None else created,
        mode,
        text,
        tokens,
        query_encoder_fingerprint,
        foundation_fingerprint,
        k,
        json.dumps(results),
        latency_ms,
        adapter_fingerprint,
        model_version,
        json.dumps(interleave) if interleave is not None else None,
    )
