"""``isacir-lab pilot``: a Shapes-CIR pilot prepared, then played against a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from isacir.cli._app import JSON_ALWAYS_HELP, emit_json, err

from ._app import pilot_app


@pilot_app.command("prepare")
def prepare_cmd(
    bench: Path = typer.Option(Path("runs/shapes"), help="A bench shapes cache folder (built where missing)."),
    seed: int = typer.Option(0, help="The bench seed."),
    queries: int = typer.Option(1000, help="Pilot queries in the split."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """A Shapes-CIR pilot: its own split and gallery, and the ISA encoder exported for the device."""
    from ..shapes.feedback_bench import prepare_pilot
    from ..shapes.pilot import PilotConfig

    paths = prepare_pilot(bench, seed, PilotConfig(queries=queries), log=lambda m: err.print(m, highlight=False))
    err.print(
        f"serve it with: isacir serve --gallery {paths['gallery']} --query-encoder {paths['query_encoder']} "
        "--api-key-file KEYS",
        highlight=False,
        soft_wrap=True,
    )
    emit_json(paths)


@pilot_app.command("simulate")
def simulate_cmd(
    pilot: Path = typer.Option(..., help="The split folder that isacir-lab pilot prepare printed (pilot)."),
    gallery: Path = typer.Option(..., help="The gallery the running service serves (to map items to ids)."),
    edge: Path = typer.Option(..., help="The exported device model (edge folder)."),
    url: str = typer.Option("http://127.0.0.1:8000", help="The running isacir serve."),
    api_key: Optional[str] = typer.Option(
        None, envvar="ISACIR_API_KEY", help="The key the simulator sends (needs search and feedback)."
    ),
    api_key_file: Optional[Path] = typer.Option(None, help="Or a plaintext keys file whose first key it sends."),
    queries: Optional[int] = typer.Option(None, help="Only the first N pilot queries (default: all)."),
    k: int = typer.Option(10, help="Candidates the simulated operator looks at."),
    payload_dtype: str = typer.Option("int8", help="How the device quantises its tokens: fp16 | int8 | int4."),
    operators: str = typer.Option(
        "realistic",
        help="Who judges: realistic (simulated people, the defaults of bench feedback's operator options) or "
        "oracle (reads the ground truth, judges every query, never errs).",
    ),
    operator_seed: int = typer.Option(0, help="The operators' random stream."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Play the pilot against a running service: device payloads over HTTP, operator verdicts back."""
    from isacir.edge.runner import EdgeEncoder
    from isacir.serve.settings import read_api_keys

    from ..shapes.feedback_bench import gallery_ids
    from ..shapes.operators import OperatorConfig
    from ..shapes.pilot import ServiceClient, simulate_pilot

    people = OperatorConfig.of(operators, seed=operator_seed)
    key = api_key or (read_api_keys(api_key_file)[0] if api_key_file else None)
    stats = simulate_pilot(
        pilot,
        ServiceClient(url, key),
        EdgeEncoder(edge),
        gallery_ids(gallery, pilot),
        k=k,
        limit=queries,
        payload_dtype=payload_dtype,
        operators=people,
        log=lambda m: err.print(m, highlight=False),
    )
    emit_json({k: v for k, v in stats.items() if k != "texts"})
