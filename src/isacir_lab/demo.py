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


def run_demo(workdir: Path, serve: bool = True, small: bool = False, port: int = 8000, queries: int = 4) -> dict:
    """Returns what it measured (also used by the tests); blocks while serving."""
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
    cfg = ShapesBenchConfig.small() if small else ShapesBenchConfig()
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
    gallery_dir = workdir / "gallery"
    gallery = Gallery.open_or_create(gallery_dir, fnd)
    report = gallery.index([str(world / "unlabeled2017")], fnd, progress=True, num_workers=0)
    _say(report.summary())

    console.print("[bold]5. composed search[/] (thin-client path; a check mark is a correct image)")
    bench = load_shapes(world)
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
