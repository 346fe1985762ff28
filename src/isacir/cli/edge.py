"""``isacir export-edge`` and ``isacir edge-encode``: the device side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._app import JSON_ALWAYS_HELP, app, emit_json, err


@app.command("export-edge")
def export_edge_cmd(
    query_encoder: Path = typer.Option(..., help="Trained query encoder folder."),
    out_dir: Path = typer.Option(..., "--out", help="Edge folder: model.onnx, edge.json."),
    int8: bool = typer.Option(
        False,
        help="Also write a dynamically quantised int8 model, only if the composed queries its tokens make "
        "stay within --min-query-cosine of fp32's (loads the foundation to check).",
    ),
    min_query_cosine: float = typer.Option(0.99, help="The int8 gate: least cosine to the fp32 composed query."),
    foundation: Optional[str] = typer.Option(None, help="The foundation (default: the encoder's own)."),
    opset: int = typer.Option(17),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Export backbone + token learner to ONNX, verified against PyTorch, for the torch-free edge runtime."""
    from ..export import export_edge
    from ..query import QueryEncoder

    qe = QueryEncoder.from_pretrained(query_encoder)
    fnd = None
    if int8:
        from ..foundation import create_foundation

        fnd = create_foundation(foundation or qe.config.foundation_id)
    config = export_edge(qe, out_dir, int8=int8, opset=opset, foundation=fnd, min_query_cosine=min_query_cosine)
    v = config["verification"]
    err.print(
        f"exported to {out_dir}: ONNX vs PyTorch max |diff| {v['onnx_vs_torch_max_abs_diff']:.2e} "
        f"(tolerance {v['tolerance']:.2e}); preprocessing max |diff| {v['preprocess_max_abs_diff']:.2e}"
    )
    if "int8" in v:
        err.print(
            f"int8 variant: composed-query cosine to fp32 at least {v['int8']['min_query_cosine']:.5f} "
            f"(mean {v['int8']['mean_query_cosine']:.5f}), {v['int8']['bytes']:,} bytes vs {v['fp32_bytes']:,}"
        )
    emit_json(config)


@app.command("edge-encode")
def edge_encode_cmd(
    edge: Path = typer.Option(..., help="Exported edge folder."),
    image: Path = typer.Option(..., help="Reference photo."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write the binary payload here."),
    dtype: str = typer.Option("int8", help="fp16 | int8 | int4"),
    variant: str = typer.Option("fp32", help="fp32 | int8 model."),
    as_json: bool = typer.Option(False, "--json", help="Print the payload's JSON (debug) form."),
) -> None:
    """Run the on-device side (no torch): photo -> pseudo tokens -> payload bytes."""
    from ..edge import EdgeEncoder, payload_to_json

    enc = EdgeEncoder(edge, variant=variant)
    data = enc.payload(image, dtype=dtype)
    if out_file:
        out_file.write_bytes(data)
    err.print(f"{len(data):,} bytes ({enc.num_tokens} x {enc.dim} {dtype}, fingerprint {enc.fingerprint})")
    if as_json:
        sys.stdout.write(payload_to_json(data) + "\n")


@app.command("edge-update")
def edge_update_cmd(
    edge: Path = typer.Option(..., help="The device's edge folder (becomes a link to the version in use)."),
    server: Optional[str] = typer.Option(None, help="The isacir service, e.g. https://search.example.com."),
    api_key_file: Optional[Path] = typer.Option(
        None, help="A file whose first line is the device's API key (default: $ISACIR_API_KEY)."
    ),
    rollback: bool = typer.Option(False, "--rollback", help="Switch back to the version used before the last update."),
    no_progress: bool = typer.Option(False, "--no-progress"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Update the on-device model to the server's active version: download, verify, swap atomically."""
    import os

    from ..edge.update import EdgeUpdateError, update
    from ..edge.update import rollback as do_rollback

    try:
        if rollback:
            result = do_rollback(edge)
            err.print(f"{edge} now runs {result['rolled_back_to']} (was {result['from']})")
        else:
            if not server:
                raise typer.BadParameter("--server is needed to update (or pass --rollback)")
            key = os.environ.get("ISACIR_API_KEY")
            if api_key_file is not None:
                text = api_key_file.read_text().splitlines()
                lines = [x.strip() for x in text if x.strip() and not x.startswith("#")]
                if not lines:
                    raise typer.BadParameter(f"{api_key_file} holds no key")
                key = lines[0]
            result = update(server, edge, key, progress=not no_progress)
            if result["updated"]:
                err.print(
                    f"{edge} updated to {result['version']} ({result['bytes']:,} bytes, sha256 checked; "
                    f"previous: {result['previous']})"
                )
            else:
                err.print(f"{edge} already runs the active version {result['version']}")
    except EdgeUpdateError as exc:
        err.print(f"[red]edge-update failed:[/] {exc}")
        raise typer.Exit(1) from None
    emit_json(result)
