"""``isacir feedback``: read what operators said about answered searches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import IsacirError
from ._app import FEEDBACK_DB_HELP, JSON_ALWAYS_HELP, JSON_HELP, app, emit_json, err

if TYPE_CHECKING:
    from ..feedback import FeedbackStore

feedback_app = typer.Typer(help="Export and inspect the query log and operator feedback.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


def open_feedback_db(db: str | Path) -> FeedbackStore:
    """The store of an existing log (the commands here read; they never create one by mistake)."""
    from ..feedback import FeedbackStore
    from ..feedback.postgres import PostgresFeedbackStore, is_postgres_url

    if is_postgres_url(str(db)):
        return PostgresFeedbackStore(str(db))
    if not Path(db).is_file():
        raise IsacirError(f"feedback database not found: {db} (the service writes GALLERY/feedback.sqlite)")
    return FeedbackStore(db)


@feedback_app.command("export")
def export_cmd(
    db: str = typer.Option(..., "--feedback-db", "--db", help=FEEDBACK_DB_HELP),
    out_file: Path = typer.Option(..., "--out", help="JSON Lines file to write, one line per learnable query."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """One line per query with a positive (confirmed or corrected): tokens, text, positive, rejected ids."""
    from ..feedback import export_triplets

    counts = export_triplets(open_feedback_db(db), out_file)
    err.print(f"wrote {counts['learnable']} learnable of {counts['queries']} logged queries to {out_file}")
    emit_json({"out": str(out_file), **counts})


@feedback_app.command("prune")
def prune_cmd(
    db: str = typer.Option(..., "--feedback-db", "--db", help=FEEDBACK_DB_HELP),
    older_than_days: float = typer.Option(..., help="Drop tokens of queries older than this with no verdict."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be dropped."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Drop the payload tokens of old queries without a verdict; the rows (and pilot counts) stay."""
    n = open_feedback_db(db).prune(older_than_days, dry_run=dry_run)
    err.print(
        f"{'would drop' if dry_run else 'dropped'} the tokens of {n} unjudged queries older than "
        f"{older_than_days:g} days"
    )
    emit_json({"pruned": n, "dry_run": dry_run, "older_than_days": older_than_days})


@feedback_app.command("stats")
def stats_cmd(
    db: str = typer.Option(..., "--feedback-db", "--db", help=FEEDBACK_DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Counts of logged queries and of each verdict."""
    emit_json(open_feedback_db(db).counts())


@feedback_app.command("fit-refine")
def feedback_fit_refine(
    gallery: Path = typer.Option(..., help="The served gallery; the weights are saved in it (refine.json)."),
    query_encoder: Path = typer.Option(..., help="The served query encoder: its logged queries are used."),
    feedback: Optional[str] = typer.Option(None, "--feedback-db", help=FEEDBACK_DB_HELP + " Default: GALLERY's."),
    adapter: Optional[Path] = typer.Option(None, help="The served adapter, if any (queries are composed with it)."),
    k: int = typer.Option(10, help="Fit for the named item in the refined top K."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fit refinement's weights (POST /v1/search/{id}/refine) on the log's searches whose right item
    was not shown, and save them where the service reads them at start."""
    from ..adapt.refine import fit_refinement
    from ..adapter import QueryAdapter
    from ..foundation import create_foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..search import Retriever

    g = Gallery.open(gallery)
    fnd = create_foundation(QueryEncoder.load_config(query_encoder).foundation_id or g.info["foundation_id"])
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd).eval()
    qa = QueryAdapter.from_pretrained(adapter) if adapter is not None else None
    store = open_feedback_db(feedback or str(Path(gallery) / "feedback.sqlite"))
    weights, report = fit_refinement(store, Retriever(g, fnd, qe, adapter=qa), k=k)
    path = weights.save(gallery)
    chosen = report["chosen"]
    err.print(
        f"{report['n']} searches whose right item was not shown: hit@{k} {report['hit_at_k_before']:.3f} before, "
        f"{chosen['hit_at_k']:.3f} after one round (toward {chosen['toward']}, away {chosen['away']}) -> {path}"
    )
    if as_json:
        emit_json({"weights": {"keep": weights.keep, "toward": weights.toward, "away": weights.away}, **report})
