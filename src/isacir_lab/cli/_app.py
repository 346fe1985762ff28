"""The ``isacir-lab`` Typer application: the lab's verbs beside the product's ``isacir``."""

from __future__ import annotations

import typer

from isacir.cli._app import add_version_option

app = typer.Typer(
    help="The isacir lab: the Shapes-CIR world, its benches, the pilot simulator and the docs' result tables.",
    no_args_is_help=True,
)
bench_app = typer.Typer(help="Shapes-CIR benches that print their JSON summary as the last line.", no_args_is_help=True)
pilot_app = typer.Typer(help="A simulated pilot on Shapes-CIR against a running service.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(pilot_app, name="pilot")


add_version_option(app, "isacir-lab")
