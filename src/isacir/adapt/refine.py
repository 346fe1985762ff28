"""Refinement weights fitted on the pilot's verdicts (see :mod:`isacir.refine`).

A refinement is for the search whose right item was not shown: the operator marks what is wrong
and what looks closest, and searches again. The log holds exactly those cases: queries whose
operator named (``corrected``) an item the search had not returned. Each becomes one simulated
round: the results the operator rejected are marked wrong, and the shown result nearest the named
item is marked close (what someone asking for "more like this one" would pick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..edge.payload import PayloadError, decode_payload
from ..pilot.metrics import positive_of
from ..refine import RefineWeights, fit_weights

if TYPE_CHECKING:
    from ..feedback import FeedbackStore
    from ..search import Retriever


def refinement_rounds(store: FeedbackStore, retriever: Retriever, limit: int | None = None) -> list[dict[str, Any]]:
    """One round per logged query of this retriever's encoder whose positive was not returned."""
    import torch

    fingerprint = retriever.query_encoder.fingerprint if retriever.query_encoder is not None else None
    gallery = retriever.gallery
    rounds: list[dict[str, Any]] = []
    for q in store.queries():
        positive = positive_of(q)
        if positive is None or positive in q["results"] or q["tokens"] is None:
            continue
        try:
            decoded = decode_payload(q["tokens"])
        except PayloadError:
            continue
        if fingerprint is not None and decoded.fingerprint != fingerprint:
            continue
        shown = list(q["results"])
        rejected = {v["candidate_id"] for v in q["verdicts"] if v["verdict"] == "rejected"}
        ids, vecs = gallery.vectors(sorted(set(shown) | {positive}))
        row = {int(i): v for i, v in zip(ids.tolist(), np.asarray(vecs, dtype=np.float32), strict=True)}
        if positive not in row:
            continue  # removed from the gallery since
        others = [i for i in shown if i in row and i not in rejected]
        marks = {i: "wrong" for i in rejected if i in row}
        if others:
            marks[max(others, key=lambda i: float(row[i] @ row[positive]))] = "close"
        if not marks:
            continue
        tokens = retriever.prepare_tokens(torch.from_numpy(decoded.tokens)[None])
        rounds.append({"query": retriever.compose(tokens, [q["text"]])[0], "marks": marks, "positive": positive})
        if limit is not None and len(rounds) >= limit:
            break
    return rounds


def fit_refinement(
    store: FeedbackStore, retriever: Retriever, k: int = 10, limit: int | None = None
) -> tuple[RefineWeights, dict[str, Any]]:
    """The weights one refinement round finds the most named items with (see :func:`fit_weights`)."""
    rounds = refinement_rounds(store, retriever, limit)
    weights, report = fit_weights(retriever.gallery, rounds, k)
    before = sum(r["positive"] in [h.id for h in retriever.gallery.search(r["query"][None], k)[0]] for r in rounds)
    report["hit_at_k_before"] = before / len(rounds)
    return weights, report
