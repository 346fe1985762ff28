"""The Typer application and the output helpers every verb shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .._version import __version__
from ..errors import IsacirError


def _flags_show_no_placeholder() -> None:
    """On/off flags take no value, so their help shows none. typer 0.29 prints ``<bool>`` after
    them, which reads as if the flag wanted one; this restores click's own rendering for flags
    only (every other option keeps typer's type column)."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_isacir_flags", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    display_type_rich._isacir_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[union-attr]


_flags_show_no_placeholder()
app = typer.Typer(help="Asymmetric zero-shot composed image retrieval (ISA).", no_args_is_help=True)
foundation_app = typer.Typer(help="Inspect large vision-language foundations.", no_args_is_help=True)
qe_app = typer.Typer(help="Create and inspect query encoders (the light, on-device side).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print measured ratios as JSON.", no_args_is_help=True)
gallery_app = typer.Typer(help="Inspect and edit a gallery.", no_args_is_help=True)
models_app = typer.Typer(
    help="The model registry: query-side versions, their states (staged, canary, active, deprecated, retired) "
    "and the quality gate.",
    no_args_is_help=True,
)
app.add_typer(foundation_app, name="foundation")
app.add_typer(qe_app, name="query-encoder")
app.add_typer(bench_app, name="bench")
app.add_typer(gallery_app, name="gallery")
app.add_typer(models_app, name="models")

err = Console(stderr=True)
#: every verb takes --json, so that a script can pass it to any of them and read the last stdout line
JSON_HELP = "Print the result as JSON, the last line on stdout (people's output goes to stderr)."
JSON_ALWAYS_HELP = "Accepted by every verb: this one always ends stdout with its result as one JSON line."
#: the environment variable naming a weights folder, as ``--weights-dir`` does
WEIGHTS_DIR_ENV = "ISACIR_WEIGHTS_DIR"
DEVICE_HELP = "Where the large model runs: auto (a GPU when there is one), cpu, cuda or cuda:N."
FEEDBACK_DB_HELP = (
    "The query log and feedback: a SQLite file (the service keeps it at GALLERY/feedback.sqlite) or a "
    "postgresql:// URL."
)
out = Console()


def add_version_option(typer_app: typer.Typer, program: str) -> None:
    """``PROGRAM --version`` prints the program and isacir's version (the product's and the lab's)."""

    def show(value: bool) -> None:
        if value:
            print(f"{program} {__version__}")
            raise typer.Exit()

    @typer_app.callback()
    def _root(
        ctx: typer.Context,
        version: bool = typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version."),
        weights_dir: Optional[Path] = typer.Option(
            None,
            "--weights-dir",
            envvar=WEIGHTS_DIR_ENV,
            help="A folder `isacir weights unpack` filled: every model loads from it, with the network off.",
        ),
    ) -> None:
        # the weights verbs take the folder as their own target; every other verb loads from it
        if weights_dir is not None and ctx.invoked_subcommand != "weights":
            from ..weights import use_weights_dir

            use_weights_dir(weights_dir)


def run_cli(typer_app: typer.Typer) -> None:
    """Run a command line: errors caused by input or environment (:class:`IsacirError`) print one
    line and exit 2; anything else is a bug and keeps its traceback."""
    try:
        typer_app()
    except IsacirError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


add_version_option(app, "isacir")


def emit_json(obj: object) -> None:
    """JSON goes to stdout as the last line, so scripts can take ``tail -n1``."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
