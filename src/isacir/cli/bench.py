"""``isacir bench``: benchmarks that print measured ratios as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import IsacirError
from ..gallery.stores import INDEX_HELP
from ._app import DEVICE_HELP, JSON_ALWAYS_HELP, bench_app, emit_json, err

RUNTIME_HELP = (
    "torch | onnx | onnx-int8 | all (comma-separated): each measures the light side and the large "
    "image encoder in that runtime, side by side."
)


def _runtimes(text: str) -> tuple[str, ...]:
    from ..bench.query_side import parse_runtimes

    try:
        return parse_runtimes(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--runtime") from None


@bench_app.command("query-side")
def bench_query_side(
    foundation: str = typer.Option("openclip:ViT-L-14", help="Large model (random init is fine for speed)."),
    backbone: str = typer.Option("efficientnet_b0"),
    tokens: int = typer.Option(8),
    threads: int = typer.Option(1, help="CPU threads for both sides."),
    repeats_light: int = typer.Option(30),
    repeats_large: int = typer.Option(7),
    image_size: Optional[int] = typer.Option(None, help="Light-side input size (default: the backbone's)."),
    output_stride: Optional[int] = typer.Option(
        None, help="Light backbone output stride, 8 | 16 | 32 (default: its own)."
    ),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON object."),
) -> None:
    """Light query side vs large image encoder: latency ratio and bytes on the wire."""
    from ..bench.query_side import bench_query_side as run
    from ..bench.query_side import bench_runtimes

    chosen = _runtimes(runtime)
    kwargs = dict(image_size=image_size, output_stride=output_stride)
    if chosen == ("torch",):
        result = run(foundation, backbone, tokens, threads, repeats_light, repeats_large, **kwargs)
    else:
        result = bench_runtimes(foundation, backbone, tokens, threads, chosen, repeats_light, repeats_large, **kwargs)
    if not as_json:
        table = Table("metric", "value")
        for k in ("light_ms", "large_ms", "speedup", "payload_bytes", "jpeg_bytes", "payload_over_jpeg"):
            table.add_row(k, str(result[k]))
        err.print(table)
        if "runtimes" in result:
            rt = Table("runtime", "light ms", "large ms", "speedup")
            for name, row in result["runtimes"].items():
                rt.add_row(name, str(row["light_ms"]), str(row["large_ms"]), str(row["speedup"]))
            err.print(rt)
    emit_json(result)


@bench_app.command("backbones")
def bench_backbones_cmd(
    foundation: str = typer.Option("openclip:ViT-L-14", help="Large model (random init is fine for speed)."),
    backbones: Optional[str] = typer.Option(None, help="Comma-separated backbones (default: the curated list)."),
    tokens: int = typer.Option(8),
    threads: int = typer.Option(1, help="CPU threads for both sides."),
    repeats_light: int = typer.Option(30),
    repeats_large: int = typer.Option(5),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP + " PyTorch is always measured."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Every light backbone against one large image encoder, side by side in one run."""
    from ..bench.query_side import BACKBONES, backbones_report, bench_backbones

    names = [b.strip() for b in backbones.split(",") if b.strip()] if backbones else list(BACKBONES)
    result = bench_backbones(foundation, names, tokens, threads, repeats_light, repeats_large, _runtimes(runtime))
    err.print(backbones_report(result))
    emit_json(result)


@bench_app.command("search")
def bench_search_cmd(
    n: int = typer.Option(1_000_000, help="Vectors in the FAISS index."),
    dim: int = typer.Option(768),
    n_queries: int = typer.Option(1000, "--n-queries", help="Queries measured (and as many more to tune nprobe)."),
    data: str = typer.Option("clustered", help="clustered | calibrated | uniform (see the module docs)."),
    calibrate_from: Optional[Path] = typer.Option(
        None, help="Gallery whose vectors shape --data calibrated (cluster sizes, spread, lean)."
    ),
    queries: str = typer.Option("near", "--queries", help="near (stored point + noise) | gap (across a modality gap)."),
    gap_cos: float = typer.Option(0.3, help="Cosine of a gap query to its source point."),
    index: str = typer.Option(
        "auto", "--index", help="Index families to compare: 'all' or a comma list of " + INDEX_HELP
    ),
    rerank: int = typer.Option(100, help="Exact re-ranking depth measured for approximate families (0: skip)."),
    milvus_n: int = typer.Option(20_000, help="Vectors for the Milvus Lite run (0: skip)."),
    threads: Optional[int] = typer.Option(None, help="FAISS OpenMP threads (default: all cores)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Index families against exact search: latency, recall@10 (with and without exact re-ranking),
    memory per million vectors and build time; Milvus Lite at a smaller n."""
    from ..bench.search import bench_faiss, bench_milvus, calibrate, make_data, make_queries
    from ..gallery.stores import INDEX_KINDS, resolve_index_kind

    kinds = tuple(k for k in INDEX_KINDS if k != "auto") if index == "all" else tuple(index.split(","))
    for kind in kinds:
        resolve_index_kind(0, dim, kind)
    profile = None
    if data == "calibrated":
        if calibrate_from is None:
            raise IsacirError("--data calibrated needs --calibrate-from GALLERY")
        from ..gallery import Gallery

        _, source = Gallery.open(calibrate_from).vectors()
        err.print(f"calibrating on {len(source):,} vectors of {calibrate_from} ...")
        profile = calibrate(source, seed=seed)
    err.print(f"generating {n:,} x {dim} {data} unit vectors ...")
    vecs = make_data(n, dim, data, seed=seed, profile=profile)
    qs = make_queries(vecs, n_queries, seed=seed + 1, kind=queries, gap_cos=gap_cos)
    tune = make_queries(vecs, 200, seed=seed + 2, kind=queries, gap_cos=gap_cos)
    err.print(f"building and measuring FAISS ({', '.join(kinds)}) ...")
    result = bench_faiss(vecs, qs, threads=threads, kinds=kinds, tune_queries=tune, rerank=rerank)
    result.update(data=data, query_kind=queries)
    if queries == "gap":
        result["gap_cos"] = gap_cos
    if profile is not None:
        result["calibration"] = {
            "gallery": str(calibrate_from),
            **{k: v for k, v in profile.items() if k not in ("size_fractions", "cos_to_centre_quantiles")},
            "cos_to_centre_median": profile["cos_to_centre_quantiles"][50],
            "largest_cluster_fraction": profile["size_fractions"][0],
        }
    if milvus_n:
        err.print(f"measuring Milvus Lite at n={milvus_n:,} ...")
        small = vecs[:milvus_n]
        result["milvus"] = bench_milvus(small, make_queries(small, min(n_queries, 200), kind=queries, gap_cos=gap_cos))
    if not as_json:
        table = Table("index", "build s", "p50 ms", "p99 ms", "R@10", "R@10 rerank", "rerank p50", "GiB/1M")
        for r in result["indexes"].values():
            table.add_row(
                r["index"]["type"],
                str(r["build_s"]),
                str(r["ann_p50_ms"]),
                str(r["ann_p99_ms"]),
                str(r["recall_at_10"]),
                str(r.get("recall_at_10_rerank", "")),
                str(r.get("rerank_p50_ms", "")),
                str(r["gib_per_million"]),
            )
        err.print(table)
        err.print(f"exact p50 {result['exact_p50_ms']} ms")
    emit_json(result)


@bench_app.command("index")
def bench_index_cmd(
    foundation: str = typer.Option("openclip:ViT-B-32", help="Random init is fine: speed only."),
    images: int = typer.Option(64),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(1),
    threads: int = typer.Option(2),
    as_json: bool = typer.Option(False, "--json"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Indexing images/s as a fraction of the bare model-forward rate on the same images."""
    from ..bench.indexing import bench_index

    result = bench_index(foundation, images, batch_size, workers, threads, device)
    if not as_json:
        err.print(
            f"bare forward {result['bare_forward_img_s']} img/s, indexing {result['index_img_s']} img/s "
            f"= {result['fraction_of_bare']:.0%}"
        )
    emit_json(result)
