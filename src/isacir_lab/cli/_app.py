"""The ``isacir-lab`` Typer application: the lab's verbs beside the product's ``isacir``."""

from __future__ import annotations

import typer

from isacir._version import __version__

app = typer.Typer(
    help="The isacir lab: the Shapes-CIR world, its benches, the pilot simulator and the docs' result tables.",
    no_args_is_help=True,
)
bench_app = typer.Typer(help="Shapes-CIR benches that print their JSON summary as the last line.", no_args_is_help=True)
pilot_app = typer.Typer(help="A simulated pilot on Shapes-CIR against a running service.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(pilot_app, name="pilot")


def _version(value: bool) -> None:
    if value:
        print(f"isacir-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass
