"""``isacir eval``: the official CIR protocols."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import IsacirError
from ._app import DEVICE_HELP, JSON_ALWAYS_HELP, app, emit_json, err


@app.command("eval")
def eval_cmd(
    benchmark: str = typer.Option(..., help="cirr | fashioniq | circo | shapes"),
    data: Path = typer.Option(..., help="Benchmark root folder (official layout)."),
    foundation: str = typer.Option(..., help="Large model the query encoder was trained for."),
    query_encoder: Optional[Path] = typer.Option(None, help="Trained query encoder (mode isa)."),
    mode: Optional[str] = typer.Option(None, help="isa | image_only | text_only | image_plus_text"),
    split: str = typer.Option("val", help="val, or test for test-server files (CIRR test1, CIRCO test)."),
    category: str = typer.Option("all", help="FashionIQ: dress | shirt | toptee | all."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where metrics JSON and submissions go."),
    workers: int = typer.Option(2, help="Decode workers for the gallery."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Evaluate on an official benchmark: metric table, JSON, and test-server files for test splits."""
    from ..evaluation import (
        FIQ_CATEGORIES,
        evaluate,
        load_circo,
        load_cirr,
        load_fashioniq,
        load_shapes,
        submission_files,
    )
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    fnd = create_foundation(foundation, device=device)
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd) if query_encoder else None
    mode = mode or ("isa" if qe else "image_plus_text")
    if mode == "isa" and qe is None:
        raise IsacirError("mode isa needs --query-encoder (or pick a training-free --mode)")
    if benchmark == "cirr":
        benches = [load_cirr(data, split)]
    elif benchmark == "circo":
        benches = [load_circo(data, split)]
    elif benchmark == "shapes":
        benches = [load_shapes(data)]
    elif benchmark == "fashioniq":
        cats = FIQ_CATEGORIES if category == "all" else (category,)
        benches = [load_fashioniq(data, c, split) for c in cats]
    else:
        raise IsacirError(f"unknown benchmark {benchmark!r}; choose cirr, fashioniq, circo or shapes")
    results: dict = {"benchmark": benchmark, "split": split, "mode": mode, "foundation": foundation, "metrics": {}}
    out_dir = out_dir or Path("runs") / f"eval-{benchmark}-{split}"
    for bench in benches:
        metrics, rankings = evaluate(bench, fnd, mode=mode, query_encoder=qe, workers=workers)
        results["metrics"][bench.name] = metrics
        if not bench.labelled:
            files = submission_files(bench, rankings, out_dir)
            results.setdefault("submission_files", []).extend(str(f) for f in files)
    if benchmark == "fashioniq" and len(benches) > 1:
        per = results["metrics"].values()
        results["metrics"]["fashioniq-average"] = {k: sum(m[k] for m in per) / len(benches) for k in ("R@10", "R@50")}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    table = Table("benchmark", "metric", "value")
    for name, metrics in results["metrics"].items():
        for k, v in metrics.items():
            table.add_row(name, k, f"{v:.2f}")
    err.print(table)
    emit_json(results)
