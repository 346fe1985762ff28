"""``isacir foundation``, ``isacir backbones``, ``isacir methods`` and ``isacir query-encoder``: the models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import JSON_ALWAYS_HELP, JSON_HELP, app, emit_json, err, foundation_app, out, qe_app


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
def foundation_families(
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List foundation families and their name syntax."""
    from ..foundation import list_families

    families = list_families()
    if as_json:
        emit_json([{"family": prefix, "usage": f"{prefix}:{usage}"} for prefix, usage in families.items()])
        return
    for prefix, usage in families.items():
        out.print(f"[bold]{prefix}[/]:{usage}")


@app.command("backbones")
def backbones(
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the curated light backbones (any timm model name also works)."""
    from ..query import list_backbones

    specs = list(list_backbones().values())
    if as_json:
        emit_json(
            [
                {"name": s.name, "timm_name": s.timm_name, "image_size": s.image_size, "notes": s.description}
                for s in specs
            ]
        )
        return
    table = Table("name", "timm model", "input px", "notes")
    for spec in specs:
        table.add_row(spec.name, spec.timm_name, str(spec.image_size), spec.description)
    out.print(table)


@app.command("methods")
def methods_cmd(
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the registered query-side methods (`isacir train --method NAME`)."""
    from ..query import get_method, list_methods

    methods = {name: get_method(name) for name in list_methods()}
    if as_json:
        emit_json(
            [
                {
                    "name": n,
                    "aliases": list(m.aliases),
                    "reads": m.reads,
                    "on_device": m.has_backbone,
                    "summary": m.summary,
                }
                for n, m in methods.items()
            ]
        )
        return
    table = Table("name", "aliases", "reads", "runs on a device", "what it is")
    for name, m in methods.items():
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write an untrained query encoder bound to FOUNDATION (training starts from this)."""
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    fnd = create_foundation(foundation)
    weights = str(backbone_weights) if backbone_weights else pretrained
    qe = QueryEncoder.create(fnd, backbone=backbone, num_tokens=tokens, pretrained=weights, output_stride=output_stride)
    qe.save_pretrained(out_dir)
    err.print(f"wrote untrained query encoder to {out_dir} (foundation fingerprint {fnd.fingerprint})")
    if as_json:
        emit_json({"out": str(out_dir), "fingerprint": qe.fingerprint, "foundation_fingerprint": fnd.fingerprint})


@qe_app.command("info")
def qe_info(
    directory: Path = typer.Argument(..., help="Query-encoder checkpoint folder."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Print a query encoder's config (backbone, N, foundation and its fingerprint)."""
    from ..query import QueryEncoder

    qe = QueryEncoder.from_pretrained(directory)
    info = qe.config.to_dict()
    info["parameters"] = sum(p.numel() for p in qe.parameters())
    emit_json(info)
