"""``isacir-lab``: the lab's command line (Shapes-CIR benches, pilot simulator, demo, result tables).

It shares the product's conventions: errors caused by input print one line and exit 2, and the
last stdout line of a verb that measures something is its JSON summary.
"""

from __future__ import annotations

from pathlib import Path

import typer

from isacir.cli._app import JSON_ALWAYS_HELP, JSON_HELP, emit_json, err, run_cli

from . import bench, pilot  # noqa: F401  (registers the verbs)
from ._app import app

__all__ = ["app", "main"]


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path(".cache/demo"), help="Where the world, models and gallery are cached."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do everything except serving the UI."),
    port: int = typer.Option(8000, help="Port for the UI on 127.0.0.1."),
    small: bool = typer.Option(False, help="The scaled-down world and models (what the tests use)."),
    full: bool = typer.Option(
        False, "--full", help="Train the bench's recipe (the results page's numbers; about 30 minutes cold)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Shapes-CIR end to end: world, foundation, ISA encoder, gallery, searches, device path, web UI.

    Cold, the demo recipe takes under 10 minutes on 2 cores and prints the test recall it reaches;
    warm, about a minute."""
    from ..demo import run_demo

    if small and full:
        raise typer.BadParameter("--small and --full are two different recipes; pick one", param_hint="--full")
    summary = run_demo(workdir, serve=not no_serve, small=small, port=port, full=full)
    emit_json(summary)


@app.command("render")
def render(
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if a generated file is stale."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the docs' generated tables and blocks from the run records in docs/results/."""
    from ..results import ROOT, render_docs

    stale = render_docs(check=check)
    if as_json:
        emit_json({"root": str(ROOT), "stale" if check else "written": stale})
    if stale and check:
        err.print(f"stale generated files in {ROOT} (run: isacir-lab render): " + ", ".join(stale))
        raise typer.Exit(1)


def main() -> None:
    run_cli(app)
