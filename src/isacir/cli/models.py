"""``isacir foundation``, ``isacir backbones``, ``isacir methods`` and ``isacir query-encoder``: the models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import app, emit_json, err, foundation_app, out, qe_app


@foundation_app.command("info")
def foundation_info(
    name: str = typer.Argument(..., help="e.g. openclip:ViT-B-32/openai, openclip:ARCH@/ckpt.pt, hf-blip:DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table."),
) -> None:
    """Load a foundation and print its dimensions and fingerprint."""
    from ..foundation import create_foundation

    info = create_foundation(name).describe()
    if as_json:
        emit_json(info)
        return
    table = Table(show_header=False)
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    out.print(table)


@foundation_app.command("families")
def foundation_families() -> None:
    """List foundation families and their name syntax."""
    from ..foundation import list_families

    for prefix, usage in list_families().items():
        out.print(f"[bold]{prefix}[/]:{usage}")


@app.command("backbones")
def backbones() -> None:
    """List the curated light backbones (any timm model name also works)."""
    from ..query import list_backbones

    table = Table("name", "timm model", "input px", "notes")
    for spec in list_backbones().values():
        table.add_row(spec.name, spec.timm_name, str(spec.image_size), spec.description)
    out.print(table)


@app.command("methods")
def methods_cmd() -> None:
    """List the registered query-side methods (`isacir train --method NAME`)."""
    from ..query import get_method, list_methods

    table = Table("name", "aliases", "reads", "runs on a device", "what it is")
    for name in list_methods():
        m = get_method(name)
        table.add_row(name, ", ".join(m.aliases), m.reads, "yes" if m.has_backbone else "no", m.summary)
    out.print(table)


@qe_app.command("init")
def qe_init(
    foundation: str = typer.Option(..., help="Foundation whose word-embedding space the tokens target."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    backbone: str = typer.Option("efficientnet_b0", help="Light backbone (see `isacir backbones`)."),
    tokens: int = typer.Option(8, help="Number of pseudo tokens N."),
    pretrained: bool = typer.Option(False, help="Start the backbone from timm's ImageNet weights (download)."),
    backbone_weights: Optional[Path] = typer.Option(None, help="Local weights file for the backbone."),
    output_stride: Optional[int] = typer.Option(None, help="Backbone output stride, 8 | 16 | 32 (default: its own)."),
) -> None:
    """Write an untrained query encoder bound to FOUNDATION (training starts from this)."""
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    fnd = create_foundation(foundation)
    weights = str(backbone_weights) if backbone_weights else pretrained
    qe = QueryEncoder.create(fnd, backbone=backbone, num_tokens=tokens, pretrained=weights, output_stride=output_stride)
    qe.save_pretrained(out_dir)
    err.print(f"wrote untrained query encoder to {out_dir} (foundation fingerprint {fnd.fingerprint})")


@qe_app.command("info")
def qe_info(directory: Path = typer.Argument(..., help="Query-encoder checkpoint folder.")) -> None:
    """Print a query encoder's config (backbone, N, foundation and its fingerprint)."""
    from ..query import QueryEncoder

    qe = QueryEncoder.from_pretrained(directory)
    info = qe.config.to_dict()
    info["parameters"] = sum(p.numel() for p in qe.parameters())
    emit_json(info)
