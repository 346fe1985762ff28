"""``isacir`` command line: verbs are pipeline stages.

Errors caused by input or environment (:class:`~isacir.errors.IsacirError`) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
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
    output_stride: Optional[int] = typer.Option(None, help="Backbone output stride, 8 | 16 | 32 (default: its own)."),
) -> None:
    """Write an untrained query encoder bound to FOUNDATION (training starts from this)."""
    from .foundation import create_foundation
    from .query import QueryEncoder

    fnd = create_foundation(foundation)
    weights = str(backbone_weights) if backbone_weights else pretrained
    qe = QueryEncoder.create(fnd, backbone=backbone, num_tokens=tokens, pretrained=weights, output_stride=output_stride)
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


@app.command("train")
def train_cmd(
    images: list[str] = typer.Option(..., "--images", help="Folder, .txt file list or .tar shards (brace patterns ok); repeatable."),
    foundation: str = typer.Option(..., help="Frozen large model, e.g. openclip:ViT-L-14/openai."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: checkpoints/, final/, train_log.csv."),
    method: str = typer.Option("isa", help="isa | isa-symmetric | pic2word"),
    backbone: str = typer.Option("efficientnet_b0", help="Light backbone for isa (see `isacir backbones`)."),
    tokens: int = typer.Option(8, help="Pseudo tokens N (pic2word always uses 1)."),
    epochs: int = typer.Option(1),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps for the schedule (default: epochs x steps/epoch)."),
    stop_after: Optional[int] = typer.Option(None, help="Stop after this many steps without changing the schedule."),
    batch_size: int = typer.Option(64, help="Per-process batch size."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    lr: float = typer.Option(3e-4),
    weight_decay: float = typer.Option(0.05),
    warmup_steps: int = typer.Option(100),
    temperature: float = typer.Option(0.07, help="Initial InfoNCE temperature."),
    fixed_temperature: bool = typer.Option(False, help="Do not learn the temperature."),
    lar_weight: float = typer.Option(0.0, help="Weight of the local alignment regulariser (0 = GCD only)."),
    word_weight: float = typer.Option(0.0, help="Weight of the word prior (pull each token towards its nearest real word); an ablation, 0 = off."),
    local_grid: Optional[int] = typer.Option(None, help="Pool cached patch features to GRID x GRID (saves disk)."),
    augment: str = typer.Option("light", help="Query-side augmentation: light | medium | none (medium adds brightness/contrast jitter)."),
    image_size: Optional[int] = typer.Option(None, help="Query-side input size (default: the backbone's)."),
    output_stride: Optional[int] = typer.Option(None, help="isa backbone output stride, 8 | 16 | 32 (default: its own; 16 keeps a 4x4 map at 64 px)."),
    pretrained: bool = typer.Option(False, help="Start the backbone from ImageNet weights."),
    backbone_weights: Optional[Path] = typer.Option(None, help="Local backbone weights file (timm layout)."),
    seed: int = typer.Option(0),
    workers: Optional[int] = typer.Option(None, help="DataLoader workers (default: 8 on CUDA, 0 on CPU)."),
    checkpoint_every: int = typer.Option(500, help="Save a resumable checkpoint every N steps."),
    cache_dir: Optional[Path] = typer.Option(None, help="Teacher-feature cache root (default: OUT/teacher-cache)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute teacher features every step (benchmarks)."),
    resume: Optional[str] = typer.Option(None, help="'auto' (latest checkpoint in OUT) or a checkpoint folder."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a query encoder from unlabeled images (GCD + optional LAR)."""
    from .foundation import create_foundation
    from .training import TrainConfig, train

    config = TrainConfig(
        method=method,
        backbone=backbone,
        pretrained_backbone=str(backbone_weights) if backbone_weights else pretrained,
        tokens=tokens,
        image_size=image_size,
        output_stride=output_stride,
        epochs=epochs,
        max_steps=max_steps,
        stop_after=stop_after,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        temperature=temperature,
        learn_temperature=not fixed_temperature,
        lar_weight=lar_weight,
        word_weight=word_weight,
        local_grid=local_grid,
        augment=augment,
        seed=seed,
        num_workers=workers,
        checkpoint_every=checkpoint_every,
        use_cache=not no_cache,
        cache_dir=str(cache_dir) if cache_dir else None,
        progress=progress,
    )
    fnd = create_foundation(foundation)
    resume_arg: bool | str = False
    if resume:
        resume_arg = True if resume == "auto" else resume
    result = train(images, fnd, out_dir, config, resume=resume_arg, log=lambda m: err.print(m, highlight=False))
    _emit_json(
        {
            "out": str(result.out_dir),
            "steps": result.steps,
            "final_loss": result.final_loss,
            "skipped": result.skipped,
            "seconds": round(result.seconds, 2),
        }
    )


gallery_app = typer.Typer(help="Inspect and edit a gallery.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")


@app.command("index")
def index_cmd(
    paths: list[str] = typer.Argument(..., help="Folders, .txt file lists or .tar shards to index."),
    gallery: Path = typer.Option(..., help="Gallery folder (created on first use)."),
    foundation: Optional[str] = typer.Option(None, help="Large model; required for a new gallery."),
    store: str = typer.Option("faiss", help="faiss | milvus://./gallery.db | milvus://host:19530"),
    prune: bool = typer.Option(False, help="Remove entries whose files disappeared from PATHS."),
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(2, help="DataLoader workers decoding images while the model encodes."),
    metadata: Optional[str] = typer.Option(None, help="JSON object stored with every added image."),
    ray: Optional[str] = typer.Option(None, help="Embed with Ray Data: 'local' or a cluster address."),
    ray_actors: int = typer.Option(2, help="Ray embedding actors."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True),
) -> None:
    """Embed images with the foundation's image encoder into a gallery (incremental, crash-safe)."""
    from .foundation import create_foundation
    from .gallery import Gallery

    meta = None
    if metadata:
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise IsacirError(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise IsacirError("--metadata must be a JSON object")
    if foundation is None:
        info_path = gallery / "gallery.json"
        if not info_path.is_file():
            raise IsacirError(f"{gallery} is a new gallery: pass --foundation")
        foundation = json.loads(info_path.read_text())["foundation_id"]
    fnd = create_foundation(foundation)
    g = Gallery.open_or_create(gallery, fnd, store)
    encoder = None
    if ray:
        from .gallery.distributed import ray_encoder

        encoder = ray_encoder(foundation, address=None if ray == "local" else ray, actors=ray_actors, batch_size=batch_size)
    report = g.index(paths, fnd, prune=prune, batch_size=batch_size, num_workers=workers, metadata=meta,
                     progress=progress, encoder=encoder)
    err.print(report.summary(), highlight=False)
    for reason, files in sorted(report.skipped.items()):
        for f in files[:10]:
            err.print(f"  skipped ({reason}) {f}", highlight=False)
    if as_json:
        _emit_json(report.to_dict())


@gallery_app.command("info")
def gallery_info(gallery: Path = typer.Argument(...)) -> None:
    """Foundation, store, size and index parameters of a gallery."""
    from .gallery import Gallery

    _emit_json(Gallery.open(gallery).describe())


@gallery_app.command("rm")
def gallery_rm(
    ids: list[int] = typer.Argument(..., help="Entry ids (from search results or `gallery ls`)."),
    gallery: Path = typer.Option(...),
) -> None:
    """Remove entries by id."""
    from .gallery import Gallery

    removed = Gallery.open(gallery).remove(ids)
    err.print(f"removed {removed} of {len(ids)} ids")


@gallery_app.command("ls")
def gallery_ls(gallery: Path = typer.Argument(...), limit: int = typer.Option(20)) -> None:
    """List entries (id, path, content hash)."""
    from .gallery import Gallery

    for item in Gallery.open(gallery).items()[:limit]:
        out.print(f"{item['id']}\t{item['path']}\t{item['hash']}", highlight=False)


@app.command("search")
def search_cmd(
    gallery: Path = typer.Option(...),
    image: Optional[Path] = typer.Option(None, help="Reference image."),
    text: list[str] = typer.Option([], help="Modifier text (repeat to average several)."),
    query_encoder: Optional[Path] = typer.Option(None, help="Trained query encoder folder (mode isa)."),
    mode: Optional[str] = typer.Option(None, help="isa | image_plus_text | image_only | text_only"),
    k: int = typer.Option(10, "-k", help="Results to return."),
    rerank: int = typer.Option(0, help="Re-rank the top N with the large model (0: off)."),
    foundation: Optional[str] = typer.Option(None, help="Override the gallery's foundation name (same weights)."),
    as_json: bool = typer.Option(False, "--json", help="Last stdout line: JSON list of hits."),
) -> None:
    """Composed search: reference image + modifier text -> top-K gallery images."""
    from .foundation import create_foundation
    from .gallery import Gallery
    from .query import QueryEncoder
    from .search import Retriever

    g = Gallery.open(gallery)
    fnd = create_foundation(foundation or g.info["foundation_id"])
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd) if query_encoder else None
    retriever = Retriever(g, fnd, qe)
    if mode is None and qe is None:
        err.print("no --query-encoder given: using the training-free image_plus_text fallback")
    hits = retriever.search(image=image, text=text or [""], k=k, rerank=rerank, mode=mode)
    if as_json:
        _emit_json([{"id": h.id, "path": h.path, "score": round(h.score, 6)} for h in hits])
        return
    table = Table("#", "score", "id", "path")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.4f}", str(h.id), h.path)
    out.print(table)


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
) -> None:
    """Evaluate on an official benchmark: metric table, JSON, and test-server files for test splits."""
    from dataclasses import replace

    from .evaluation import FIQ_CATEGORIES, evaluate, load_circo, load_cirr, load_fashioniq, submission_files
    from .foundation import create_foundation
    from .query import QueryEncoder

    fnd = create_foundation(foundation)
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd) if query_encoder else None
    mode = mode or ("isa" if qe else "image_plus_text")
    if mode == "isa" and qe is None:
        raise IsacirError("mode isa needs --query-encoder (or pick a training-free --mode)")
    if benchmark == "cirr":
        benches = [load_cirr(data, split)]
    elif benchmark in ("circo", "shapes"):
        # Shapes-CIR is written in CIRCO's layout (its test split carries ground truth)
        bench = load_circo(data, "test" if benchmark == "shapes" else split)
        benches = [replace(bench, name=benchmark) if benchmark == "shapes" else bench]
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
    _emit_json(results)


@app.command("export-edge")
def export_edge_cmd(
    query_encoder: Path = typer.Option(..., help="Trained query encoder folder."),
    out_dir: Path = typer.Option(..., "--out", help="Edge folder: model.onnx, edge.json."),
    int8: bool = typer.Option(False, help="Also write a dynamically quantised int8 model and report its accuracy delta."),
    opset: int = typer.Option(17),
) -> None:
    """Export backbone + token learner to ONNX, verified against PyTorch, for the torch-free edge runtime."""
    from .export import export_edge
    from .query import QueryEncoder

    qe = QueryEncoder.from_pretrained(query_encoder)
    config = export_edge(qe, out_dir, int8=int8, opset=opset)
    v = config["verification"]
    err.print(f"exported to {out_dir}: ONNX vs PyTorch max |diff| {v['onnx_vs_torch_max_abs_diff']:.2e} "
              f"(tolerance {v['tolerance']:.2e}); preprocessing max |diff| {v['preprocess_max_abs_diff']:.2e}")
    if "int8" in v:
        err.print(f"int8 variant: mean token cosine {v['int8']['mean_token_cosine']:.5f}, "
                  f"{v['int8']['bytes']:,} bytes vs {v['fp32_bytes']:,}")
    _emit_json(config)


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
    from .edge import EdgeEncoder, payload_to_json

    enc = EdgeEncoder(edge, variant=variant)
    data = enc.payload(image, dtype=dtype)
    if out_file:
        out_file.write_bytes(data)
    err.print(f"{len(data):,} bytes ({enc.num_tokens} x {enc.dim} {dtype}, fingerprint {enc.fingerprint})")
    if as_json:
        sys.stdout.write(payload_to_json(data) + "\n")


@bench_app.command("query-side")
def bench_query_side(
    foundation: str = typer.Option("openclip:ViT-L-14", help="Large model (random init is fine for speed)."),
    backbone: str = typer.Option("efficientnet_b0"),
    tokens: int = typer.Option(8),
    threads: int = typer.Option(1, help="CPU threads for both sides."),
    repeats_light: int = typer.Option(30),
    repeats_large: int = typer.Option(7),
    image_size: Optional[int] = typer.Option(None, help="Light-side input size (default: the backbone's)."),
    output_stride: Optional[int] = typer.Option(None, help="Light backbone output stride, 8 | 16 | 32 (default: its own)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON object."),
) -> None:
    """Light query side vs large image encoder: latency ratio and bytes on the wire."""
    from .bench.query_side import bench_query_side as run

    result = run(foundation, backbone, tokens, threads, repeats_light, repeats_large,
                 image_size=image_size, output_stride=output_stride)
    if not as_json:
        table = Table("metric", "value")
        for k in ("light_ms", "large_ms", "speedup", "payload_bytes", "jpeg_bytes", "payload_over_jpeg"):
            table.add_row(k, str(result[k]))
        err.print(table)
    _emit_json(result)


@bench_app.command("search")
def bench_search_cmd(
    n: int = typer.Option(1_000_000, help="Vectors in the FAISS index."),
    dim: int = typer.Option(768),
    queries: int = typer.Option(1000),
    data: str = typer.Option("clustered", help="clustered | uniform (see the module docs)."),
    milvus_n: int = typer.Option(20_000, help="Vectors for the Milvus Lite run (0: skip)."),
    threads: Optional[int] = typer.Option(None, help="FAISS OpenMP threads (default: all cores)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """ANN vs exact latency, recall@10 and build time (FAISS; Milvus Lite at a smaller n)."""
    from .bench.search import bench_faiss, bench_milvus, make_data, make_queries

    err.print(f"generating {n:,} x {dim} {data} unit vectors ...")
    vecs = make_data(n, dim, data)
    qs = make_queries(vecs, queries)
    err.print("building and measuring FAISS ...")
    result = bench_faiss(vecs, qs, threads=threads)
    result["data"] = data
    if milvus_n:
        err.print(f"measuring Milvus Lite at n={milvus_n:,} ...")
        small = vecs[:milvus_n]
        result["milvus"] = bench_milvus(small, make_queries(small, min(queries, 200)))
    if not as_json:
        table = Table("metric", "faiss", "milvus-lite")
        for key in ("n", "build_s", "ann_p50_ms", "ann_p99_ms", "exact_p50_ms", "recall_at_10"):
            table.add_row(key, str(result.get(key)), str(result.get("milvus", {}).get(key, "")))
        err.print(table)
    _emit_json(result)


@bench_app.command("index")
def bench_index_cmd(
    foundation: str = typer.Option("openclip:ViT-B-32", help="Random init is fine: speed only."),
    images: int = typer.Option(64),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(1),
    threads: int = typer.Option(2),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Indexing images/s as a fraction of the bare model-forward rate on the same images."""
    from .bench.indexing import bench_index

    result = bench_index(foundation, images, batch_size, workers, threads)
    if not as_json:
        err.print(f"bare forward {result['bare_forward_img_s']} img/s, indexing {result['index_img_s']} img/s "
                  f"= {result['fraction_of_bare']:.0%}")
    _emit_json(result)


def _parse_temperature(text: str) -> float | None:
    if text.strip().lower() == "learned":
        return None
    try:
        value = float(text)
    except ValueError:
        raise IsacirError(f"--temperature must be a positive number or 'learned', got {text!r}") from None
    if not 0 < value <= 10:
        raise IsacirError(f"--temperature must be in (0, 10], got {value}")
    return value


def _parse_output_stride(text: str) -> int | None:
    """``--isa-output-stride``: 8, 16 or 32, or 'native' for the backbone's own."""
    from .query.backbones import OUTPUT_STRIDES

    if text.strip().lower() == "native":
        return None
    if text.strip() not in {str(s) for s in OUTPUT_STRIDES}:
        raise IsacirError(f"--isa-output-stride must be one of {', '.join(map(str, OUTPUT_STRIDES))} or 'native', got {text!r}")
    return int(text)


@bench_app.command("shapes")
def bench_shapes_cmd(
    seed: int = typer.Option(0, help="World, foundation and training seed."),
    out: Path = typer.Option(Path("runs/shapes"), help="Cache and results folder (reused across runs)."),
    small: bool = typer.Option(False, help="The scaled-down configuration the tests use."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated subset of methods (default: all)."),
    steps: Optional[int] = typer.Option(None, help="Training steps per trained method."),
    tokens: Optional[int] = typer.Option(None, help="Pseudo tokens for isa / isa_symmetric."),
    lar_weight: Optional[float] = typer.Option(None, help="Weight of the local alignment loss."),
    word_weight: Optional[float] = typer.Option(None, help="Weight of the word prior on the pseudo tokens."),
    temperature: Optional[str] = typer.Option(None, help="GCD temperature of the trained methods: a fixed value, "
                                              "or 'learned' (learned from 0.07)."),
    isa_output_stride: Optional[str] = typer.Option(None, help="Output stride of isa's light backbone: 8 | 16 | 32, "
                                                    "or 'native' (the backbone's own)."),
    foundation_steps: Optional[int] = typer.Option(None, help="Training steps of the tiny foundation."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Shapes-CIR end to end: generate, train the tiny foundation and each method, evaluate all.

    The last stdout line is {"seed", "methods": {method: {R@1, R@5, R@10, R@50, mAP@10}}}; a
    Markdown table and a bar chart land in OUT.
    """
    from dataclasses import replace

    from .evaluation.shapes_bench import ShapesBenchConfig, run_shapes_bench

    cfg = ShapesBenchConfig.small(seed) if small else ShapesBenchConfig(seed=seed)
    overrides = (("steps", steps), ("tokens", tokens), ("lar_weight", lar_weight), ("word_weight", word_weight))
    changes = {k: v for k, v in overrides if v is not None}
    if temperature is not None:
        changes["temperature"] = _parse_temperature(temperature)
    if isa_output_stride is not None:
        changes["isa_output_stride"] = _parse_output_stride(isa_output_stride)
    if changes:
        cfg.recipe = replace(cfg.recipe, **changes)
    if foundation_steps is not None:
        cfg.foundation_steps = foundation_steps
    if methods:
        try:
            cfg = replace(cfg, methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
        except ValueError as exc:
            raise IsacirError(str(exc)) from None
    summary = run_shapes_bench(out, cfg, log=lambda m: err.print(escape(str(m)), highlight=False))
    if not as_json:
        err.print((out / f"results-seed{seed}.md").read_text())
        err.print(f"table, chart and details: {out}/results-seed{seed}.{{md,png,json}}")
    _emit_json(summary)


@app.command("serve")
def serve_cmd(
    gallery: Path = typer.Option(..., help="Gallery folder (from `isacir index`)."),
    query_encoder: Path = typer.Option(..., help="Query-encoder checkpoint folder the devices run."),
    foundation: Optional[str] = typer.Option(None, help="Default: the one the query encoder was trained for."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key_file: Optional[Path] = typer.Option(None, help="File with one API key per line (default: no auth, "
                                                "only sensible on loopback)."),
    max_upload_mb: float = typer.Option(10.0, help="Request body cap; larger bodies get 413."),
    feedback_db: Optional[Path] = typer.Option(None, help="Default: GALLERY/feedback.sqlite."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Serve composed search over HTTP, with the operator web UI at /."""
    import uvicorn

    if threads:
        import torch

        torch.set_num_threads(threads)
    from .serve import load_service

    app_ = load_service(gallery, query_encoder, foundation, api_key_file, max_upload_mb, feedback_db)
    if api_key_file is None and host not in ("127.0.0.1", "localhost", "::1"):
        err.print("[yellow]warning:[/] serving without an API key on a non-loopback address")
    err.print(f"isacir serving {gallery} on http://{host}:{port}/  (UI at /, health at /healthz)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path(".cache/demo"), help="Where the world, models and gallery are cached."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do everything except serving the UI."),
    port: int = typer.Option(8000, help="Port for the UI on 127.0.0.1."),
    small: bool = typer.Option(False, help="The scaled-down world and models (what the tests use)."),
) -> None:
    """Shapes-CIR end to end: world, foundation, ISA encoder, gallery, searches, device path, web UI."""
    from .demo import run_demo

    summary = run_demo(workdir, serve=not no_serve, small=small, port=port)
    _emit_json(summary)


def main() -> None:
    try:
        app()
    except IsacirError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
