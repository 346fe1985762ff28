"""``isacir`` command line: verbs are pipeline stages.

Errors caused by input or environment (:class:`~isacir.errors.IsacirError`) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import IsacirError

app = typer.Typer(help="Asymmetric zero-shot composed image retrieval (ISA).", no_args_is_help=True)
foundation_app = typer.Typer(help="Inspect large vision-language foundations.", no_args_is_help=True)
qe_app = typer.Typer(help="Create and inspect query encoders (the light, on-device side).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print measured ratios as JSON.", no_args_is_help=True)
app.add_typer(foundation_app, name="foundation")
app.add_typer(qe_app, name="query-encoder")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        print(f"isacir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def _emit_json(obj: object) -> None:
    """JSON goes to stdout as the last line, so scripts can take ``tail -n1``."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@foundation_app.command("info")
def foundation_info(
    name: str = typer.Argument(..., help="e.g. openclip:ViT-B-32/openai, openclip:ARCH@/ckpt.pt, hf-blip:DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table."),
) -> None:
    """Load a foundation and print its dimensions and fingerprint."""
    from .foundation import create_foundation

    info = create_foundation(name).describe()
    if as_json:
        _emit_json(info)
        return
    table = Table(show_header=False)
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    out.print(table)


@foundation_app.command("families")
def foundation_families() -> None:
    """List foundation families and their name syntax."""
    from .foundation import list_families

    for prefix, usage in list_families().items():
        out.print(f"[bold]{prefix}[/]:{usage}")


@app.command("backbones")
def backbones() -> None:
    """List the curated light backbones (any timm model name also works)."""
    from .query import list_backbones

    table = Table("name", "timm model", "input px", "notes")
    for spec in list_backbones().values():
        table.add_row(spec.name, spec.timm_name, str(spec.image_size), spec.description)
    out.print(table)


@qe_app.command("init")
def qe_init(
    foundation: str = typer.Option(..., help="Foundation whose word-embedding space the tokens target."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    backbone: str = typer.Option("efficientnet_b0", help="Light backbone (see `isacir backbones`)."),
    tokens: int = typer.Option(8, help="Number of pseudo tokens N."),
    pretrained: bool = typer.Option(False, help="Start the backbone from timm's ImageNet weights (download)."),
    backbone_weights: Optional[Path] = typer.Option(None, help="Local weights file for the backbone."),
) -> None:
    """Write an untrained query encoder bound to FOUNDATION (training starts from this)."""
    from .foundation import create_foundation
    from .query import QueryEncoder

    fnd = create_foundation(foundation)
    weights = str(backbone_weights) if backbone_weights else pretrained
    qe = QueryEncoder.create(fnd, backbone=backbone, num_tokens=tokens, pretrained=weights)
    qe.save_pretrained(out_dir)
    err.print(f"wrote untrained query encoder to {out_dir} (foundation fingerprint {fnd.fingerprint})")


@qe_app.command("info")
def qe_info(directory: Path = typer.Argument(..., help="Query-encoder checkpoint folder.")) -> None:
    """Print a query encoder's config (backbone, N, foundation and its fingerprint)."""
    from .query import QueryEncoder

    qe = QueryEncoder.from_pretrained(directory)
    info = qe.config.to_dict()
    info["parameters"] = sum(p.numel() for p in qe.parameters())
    _emit_json(info)


@bench_app.command("query-side")
def bench_query_side(
    foundation: str = typer.Option("openclip:ViT-L-14", help="Large model (random init is fine for speed)."),
    backbone: str = typer.Option("efficientnet_b0"),
    tokens: int = typer.Option(8),
    threads: int = typer.Option(1, help="CPU threads for both sides."),
    repeats_light: int = typer.Option(30),
    repeats_large: int = typer.Option(7),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON object."),
) -> None:
    """Light query side vs large image encoder: latency ratio and bytes on the wire."""
    from .bench.query_side import bench_query_side as run

    result = run(foundation, backbone, tokens, threads, repeats_light, repeats_large)
    if not as_json:
        table = Table("metric", "value")
        for k in ("light_ms", "large_ms", "speedup", "payload_bytes", "jpeg_bytes", "payload_over_jpeg"):
            table.add_row(k, str(result[k]))
        err.print(table)
    _emit_json(result)


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path(".cache/demo"), help="Where demo models are cached."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do everything except serving the UI."),
) -> None:
    """Run the end-to-end path that exists today on tiny local models."""
    from .demo import run_demo

    run_demo(workdir, serve=not no_serve)


def main() -> None:
    warnings.filterwarnings("default")
    try:
        app()
    except IsacirError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
