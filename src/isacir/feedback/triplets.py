"""Training triplets from the query log: what a verdict teaches, with no photo ever stored."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from ..pilot.metrics import positive_verdict
from .store import FeedbackStore


def learnable(query: dict[str, Any]) -> dict[str, Any] | None:
    """The training triplet of one logged query, or None when no verdict names a positive.

    The positive is the latest ``confirmed`` or ``corrected`` item; the negatives are the rejected
    candidates other than it. Tokens travel as base64 payload bytes, exactly as they were logged.
    """
    positive = positive_verdict(query)
    if positive is None or query["tokens"] is None:
        return None
    rejected = sorted(
        {v["candidate_id"] for v in query["verdicts"] if v["verdict"] == "rejected"} - {positive["candidate_id"]}
    )
    return {
        "query_id": query["query_id"],
        "created": query["created"],
        "mode": query["mode"],
        "text": query["text"],
        "payload": base64.b64encode(query["tokens"]).decode(),
        "positive_id": positive["candidate_id"],
        "positive_verdict": positive["verdict"],
        "positive_in_results": positive["in_results"],
        "rejected_ids": rejected,
        "results": query["results"],
        "query_encoder_fingerprint": query["query_encoder_fingerprint"],
        "foundation_fingerprint": query["foundation_fingerprint"],
        "adapter_fingerprint": query.get("adapter_fingerprint"),
    }


def export_triplets(store: FeedbackStore, out: str | Path) -> dict[str, int]:
    """Write one JSON line per learnable query (atomically); returns counts."""
    lines, total = [], 0
    for q in store.queries():
        total += 1
        t = learnable(q)
        if t is not None:
            lines.append(json.dumps(t, sort_keys=True))
    atomic_write_text(Path(out), "".join(line + "\n" for line in lines))
    return {"queries": total, "learnable": len(lines)}
