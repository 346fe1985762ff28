"""``make demo``: the whole asymmetric system on the Shapes-CIR world, then the operator UI.

Builds (or reuses) the world, its tiny foundation and an ISA query encoder with the same cached
pipeline as ``isacir-lab bench shapes`` (the demo's workdir is a valid ``--out`` for it), indexes the
world's gallery, runs composed searches in the terminal with hits marked, shows the device path
(ONNX encoder -> token payload -> server search), and serves the web UI on 127.0.0.1.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)


def _say(msg: str) -> None:
    console.print(f"   {msg}", highlight=False)


def run_demo(
    workdir: Path, serve: bool = True, small: bool = False, port: int = 8000, queries: int = 4, full: bool = False
) -> dict:
    """Returns what it measured (also used by the tests); blocks while serving.

    The models are the demo recipe's (:meth:`ShapesBenchConfig.demo`, minutes on 2 cores), the
    bench's with ``full`` (the numbers of the results page, half an hour cold), or the tests'
    scaled-down ones with ``small``."""
    from isacir.compose import PromptTemplate
    from isacir.edge import EdgeEncoder
    from isacir.edge.payload import decode_payload
    from isacir.evaluation.benchmarks import load_shapes
    from isacir.export import export_edge
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.search import Retriever

    from .shapes.bench import ShapesBenchConfig, build_foundation, train_method
    from .shapes.world import generate

    workdir = Path(workdir)
    cfg = ShapesBenchConfig.small() if small else ShapesBenchConfig() if full else ShapesBenchConfig.demo()
    summary: dict = {}

    console.print("[bold]1. world[/]: Shapes-CIR (synthetic scenes, composed queries with held-out phrasings)")
    world = generate(workdir / "worlds" / cfg.world.key(), cfg.world)
    _say(f"{world}")

    console.print(
        "[bold]2. foundation[/]: a tiny CLIP-style open_clip model trained from scratch on the world's captions"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name = build_foundation(world, workdir, cfg, log=_say)
        fnd = create_foundation(name)
    tpl = PromptTemplate.parse(cfg.template)
    with torch.no_grad():
        words, mod = "a large red circle in the top left", "make it blue"
        spliced = fnd.encode_composed(fnd.embed_words(words).unsqueeze(0), [mod], cfg.template)
        plain = fnd.encode_text([tpl.render(words, mod)])
        diff = (spliced - plain).abs().max().item()
    _say(f"{name}; splicing real word embeddings reproduces the text encoder: max |diff| {diff:.1e}")

    console.print("[bold]3. query side[/]: ISA (light CNN + adaptive token learner) trained on unlabeled images only")
    final = train_method("isa", world, fnd, workdir, cfg, log=_say)
    qe = QueryEncoder.from_pretrained(final, foundation=fnd).eval()
    _say(
        f"{final}: {qe.config.backbone}, {qe.num_tokens} tokens x {qe.config.word_dim}, template {qe.config.template!r}"
    )

    console.print("[bold]4. gallery[/]: the world's test gallery, indexed by the foundation's image encoder (FAISS)")
    gallery_dir = workdir / f"gallery-{cfg.foundation_key()}"  # one per foundation: recipes share a workdir
    gallery = Gallery.open_or_create(gallery_dir, fnd)
    report = gallery.index([str(world / "unlabeled2017")], fnd, progress=True, num_workers=0)
    _say(report.summary())

    bench = load_shapes(world)
    summary["test"] = _quality(bench, fnd, qe, cfg.template)
    isa, baseline = summary["test"]["isa"], summary["test"]["image_plus_text"]
    _say(
        f"on the world's {len(bench.queries)} test queries (phrasings the foundation never read): ISA R@1 "
        f"{isa['R@1']:.1f}, R@10 {isa['R@10']:.1f}; the training-free image+text baseline R@1 "
        f"{baseline['R@1']:.1f}, R@10 {baseline['R@10']:.1f}"
        + ("" if cfg.train.max_steps >= 1500 else " (the demo recipe; `--full` trains the bench's, about 30 minutes)")
    )

    console.print("[bold]5. composed search[/] (thin-client path; a check mark is a correct image)")
    kinds = {str(a["id"]): a["shared_concept"] for a in json.loads((world / "annotations" / "test.json").read_text())}
    chosen, seen = [], set()
    for q in bench.queries:  # one query per edit type
        if kinds[q.qid] not in seen:
            seen.add(kinds[q.qid])
            chosen.append(q)
    retriever = Retriever(gallery, fnd, qe)
    hits_at_5 = 0
    for q in chosen[:queries]:
        ref = bench.gallery[q.reference]
        hits = retriever.search(image=ref, text=q.modifiers[0], k=5, exclude=gallery.ids_for_paths([str(ref)]).values())
        targets = {bench.gallery[t].name for t in q.targets}
        table = Table(title=f"{ref.name} + {q.modifiers[0]!r} ({kinds[q.qid]})", title_justify="left")
        for col in ("#", "score", "image", "hit"):
            table.add_column(col)
        found = False
        for rank, h in enumerate(hits, 1):
            ok = Path(h.path).name in targets
            found |= ok
            table.add_row(str(rank), f"{h.score:.3f}", Path(h.path).name, "[green]✓[/]" if ok else "")
        hits_at_5 += found
        console.print(table)
    summary["hits_at_5"] = hits_at_5
    summary["queries"] = len(chosen[:queries])

    console.print("[bold]6. device path[/]: ONNX query encoder (no torch) -> token payload -> server search")
    edge_dir = workdir / "edge"
    if (
        not (edge_dir / "edge.json").is_file()
        or json.loads((edge_dir / "edge.json").read_text()).get("query_encoder_fingerprint") != qe.fingerprint
    ):
        export_edge(qe, edge_dir)
    enc = EdgeEncoder(edge_dir)
    q = chosen[0]
    ref = bench.gallery[q.reference]
    payload = enc.payload(ref, "fp16")
    tokens = torch.from_numpy(decode_payload(payload, expected_tokens=qe.num_tokens).tokens)[None]
    edge_hits = retriever.search(
        text=q.modifiers[0], tokens=tokens, k=5, exclude=gallery.ids_for_paths([str(ref)]).values()
    )
    thin_hits = retriever.search(
        image=ref, text=q.modifiers[0], k=5, exclude=gallery.ids_for_paths([str(ref)]).values()
    )
    shared = len({h.id for h in edge_hits} & {h.id for h in thin_hits})
    _say(
        f"{len(payload):,}-byte payload (fp16, {enc.num_tokens} x {enc.dim}) instead of the photo; "
        f"{shared} of the top 5 shared with the thin-client search (fp16 tokens may reorder near-ties)"
    )
    summary.update(payload_bytes=len(payload), edge_top5_shared=shared, gallery_items=gallery.count())

    if not serve:
        console.print("[bold]7. serve[/]: skipped (--no-serve). Start it with:")
        _say(f"isacir serve --gallery {gallery_dir} --query-encoder {final}")
        return summary
    import uvicorn

    from isacir.serve import load_service

    gallery.close()
    app = load_service(gallery_dir, final)
    console.print("[bold]7. serve[/]: the operator UI and the HTTP API (Ctrl+C stops)")
    _say(f"reference photos to try: {world / 'unlabeled2017'}")
    console.print(f"\n   [bold green]open http://127.0.0.1:{port}/[/]\n")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    return summary


def _quality(bench, fnd, qe, template: str) -> dict:
    """Test R@K of the trained encoder and of the training-free baseline, as ``bench shapes`` measures them."""
    from isacir.evaluation.evaluate import encode_gallery, evaluate

    vecs = encode_gallery(fnd, [bench.gallery[n] for n in bench.gallery], progress=False)
    out = {}
    for mode, encoder in (("isa", qe), ("image_plus_text", None)):
        metrics, _ = evaluate(
            bench, fnd, mode, query_encoder=encoder, template=template, gallery_vecs=vecs, progress=False
        )
        out[mode] = {k: round(float(metrics[k]), 1) for k in ("R@1", "R@10")}
    return out
