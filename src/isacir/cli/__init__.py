"""``isacir`` command line: verbs are pipeline stages, one module per group of verbs.

Errors caused by input or environment (:class:`~isacir.errors.IsacirError`) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from . import (  # noqa: F401  (registers the verbs)
    adapt,
    backup,
    bench,
    cycle,
    edge,
    evaluate,
    feedback,
    gallery,
    keys,
    models,
    pilot,
    registry,
    serve,
    train,
    weights,
)
from ._app import app, run_cli

__all__ = ["app", "main"]


def main() -> None:
    run_cli(app)
