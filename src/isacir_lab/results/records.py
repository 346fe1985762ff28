"""The run records the tables are made of, typed: each file read and checked once, in one place.

A table function takes these records, never a raw JSON dict, so a record whose schema drifts
fails here with the file named, instead of deep inside a table with a ``KeyError``. The tables of
learning from operators still read their records as dicts; they move here next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import METRICS

#: rows a Shapes-CIR table shows beside the methods, and how it labels them
ORACLES = {
    "oracle_target_caption": "oracle: the target's true caption",
    "oracle_reference_caption_plus_modifier": "oracle: the reference's true caption + modifier",
}

#: metric name -> value, one row of a retrieval table
Metrics = dict[str, float]


class RecordError(SystemExit):
    """A run record the renderer cannot read (stops ``isacir-lab render`` with the file named)."""


def _metrics(raw: Any, where: str) -> Metrics:
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object of metrics, got {type(raw).__name__}")
    missing = [k for k in METRICS if k not in raw]
    if missing:
        raise RecordError(f"{where}: missing {', '.join(missing)}")
    return {k: float(raw[k]) for k in METRICS}


@dataclass(frozen=True)
class ShapesRun:
    """One ``isacir-lab bench shapes`` run: ``docs/results/shapes-seed{S}.json``."""

    seed: int
    #: method -> its test metrics, in the bench's method order
    methods: dict[str, Metrics]
    #: the oracles the tables show (the others a run records are left out)
    oracles: dict[str, Metrics] = field(default_factory=dict)
    #: how the run was made, when it was not a plain cold run
    source: str | None = None

    @classmethod
    def load(cls, path: Path) -> ShapesRun:
        try:
            raw = json.loads(path.read_text())
            return cls(
                seed=int(raw["seed"]),
                methods={m: _metrics(v, f"{path}: methods.{m}") for m, v in raw["methods"].items()},
                oracles={
                    o: _metrics(v, f"{path}: oracles.{o}") for o, v in raw.get("oracles", {}).items() if o in ORACLES
                },
                source=raw.get("source"),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path} is not a bench shapes run record: {exc!r}") from None

    def rows(self) -> dict[str, Metrics]:
        """The rows of its table: every method, then the oracles."""
        return {**self.methods, **self.oracles}


def load_shapes_runs(results: Path) -> list[ShapesRun]:
    """Every ``shapes-seed*.json`` under ``results``, by seed."""
    runs = [ShapesRun.load(p) for p in sorted(results.glob("shapes-seed*.json"))]
    if not runs:
        raise RecordError(f"no shapes-seed*.json in {results}")
    return sorted(runs, key=lambda r: r.seed)
