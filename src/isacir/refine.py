"""Refinement inside a search: move the composed query toward what the operator marked as right or
close and away from what they marked wrong, and search again over the stored gallery vectors.

Rocchio's relevance feedback, on the vectors the frozen image tower already stored: no model runs
again and nothing waits for an adapter. The three weights (how much of the query to keep, how far
to move toward the marked items, how far away from the rejected ones) are fitted on the pilot's
verdicts by :func:`fit_weights` and saved beside the served version; until then the textbook
values serve. Items marked wrong leave the refined list: the operator has already said no.

Written out rather than taken from a vector database's relevance-feedback query (Qdrant 1.17 has
one) because the gallery here is FAISS or Milvus, and the move is three weighted means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import IsacirError

if TYPE_CHECKING:
    from .gallery import Gallery

MARKS = ("right", "close", "wrong")
WEIGHTS_NAME = "refine.json"


class RefineError(IsacirError, ValueError):
    pass


@dataclass(frozen=True)
class RefineWeights:
    """``keep * query + toward * mean(right and close) - away * mean(wrong)``, renormalised."""

    keep: float = 1.0
    toward: float = 0.75
    away: float = 0.15
    #: where the weights come from: ``default`` (Rocchio's textbook values) or the fit's summary
    source: str = "default"

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / WEIGHTS_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RefineWeights:
        """The weights saved in ``folder``, or the defaults when it holds none."""
        path = Path(folder) / WEIGHTS_NAME
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls(float(raw["keep"]), float(raw["toward"]), float(raw["away"]), str(raw.get("source", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise RefineError(f"{path}: not refinement weights ({exc})") from None


def check_marks(marks: Mapping[int, str]) -> None:
    if not marks:
        raise RefineError("mark at least one result: right, close or wrong")
    bad = {i: m for i, m in marks.items() if m not in MARKS}
    if bad:
        raise RefineError(f"marks must be one of {', '.join(MARKS)}; got {bad}")


def refined_query(
    query: np.ndarray, toward: np.ndarray, away: np.ndarray, weights: RefineWeights = RefineWeights()
) -> np.ndarray:
    """The moved query, unit length. ``toward`` and ``away`` are ``[n, d]`` stored vectors (n may be 0)."""
    q = weights.keep * np.asarray(query, dtype=np.float32)
    if len(toward):
        q = q + weights.toward * np.asarray(toward, dtype=np.float32).mean(0)
    if len(away):
        q = q - weights.away * np.asarray(away, dtype=np.float32).mean(0)
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise RefineError("the marks cancel the query out; mark fewer items wrong")
    return (q / norm).astype(np.float32)


def wrong_ids(marks: Mapping[int, str]) -> list[int]:
    """The items marked wrong: they leave the refined list."""
    return sorted(i for i, m in marks.items() if m == "wrong")


def marked_vectors(gallery: Gallery, marks: Mapping[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors of the items marked right or close, and of those marked wrong."""
    check_marks(marks)
    ids, vecs = gallery.vectors(sorted(marks))
    found = {int(i): v for i, v in zip(ids.tolist(), np.asarray(vecs, dtype=np.float32), strict=True)}
    missing = sorted(set(marks) - set(found))
    if missing:
        raise RefineError(f"marked item(s) {missing} are not in the gallery")
    dim = int(np.asarray(vecs).shape[1]) if len(found) else 0
    toward = [found[i] for i, m in marks.items() if m != "wrong"]
    away = [found[i] for i, m in marks.items() if m == "wrong"]
    return (
        np.stack(toward) if toward else np.zeros((0, dim), np.float32),
        np.stack(away) if away else np.zeros((0, dim), np.float32),
    )


#: the grid :func:`fit_weights` weighs (``keep`` stays 1: only the ratios matter after renormalising)
TOWARD_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
AWAY_GRID = (0.0, 0.1, 0.25, 0.5)


def fit_weights(
    gallery: Gallery, rounds: Sequence[dict[str, Any]], k: int = 10
) -> tuple[RefineWeights, dict[str, Any]]:
    """The weights under which one refinement round brings the most positives into the top ``k``.

    ``rounds``: one per judged query whose positive was not first, as a refinement would have met
    it: ``{"query": composed vector, "marks": {id: mark}, "positive": id}``; the marks are what the
    operator's verdicts say (rejected results wrong; the shown result nearest the positive close,
    as an operator who asks for "more like this one" picks it). Ties go to the smaller move."""
    if not rounds:
        raise RefineError("no judged queries to fit refinement weights on")
    # the marked vectors are read once per round, not once per grid point
    marked = [(r, *marked_vectors(gallery, r["marks"]), wrong_ids(r["marks"])) for r in rounds]
    grid = []
    for toward in TOWARD_GRID:
        for away in AWAY_GRID:
            w = RefineWeights(1.0, toward, away)
            found = 0
            for r, near, far, wrong in marked:
                hits = gallery.search(refined_query(r["query"], near, far, w)[None], k + len(wrong))[0]
                found += int(r["positive"] in [h.id for h in hits if h.id not in wrong][:k])
            grid.append({"toward": toward, "away": away, "hit_at_k": found / len(rounds)})
    best = max(grid, key=lambda g: (g["hit_at_k"], -(g["toward"] + g["away"])))
    source = f"fitted on {len(rounds)} judged queries: hit@{k} {best['hit_at_k']:.3f} after one round"
    return RefineWeights(1.0, best["toward"], best["away"], source), {"grid": grid, "chosen": best, "n": len(rounds)}
