"""Diagnostic for Shapes-CIR: the same test queries with *training* phrasings of each modifier.

The benchmark's test modifiers use phrasings (and verbs) the tiny foundation never saw. This asks
how much of the gap between methods comes from that: each test modifier is rewritten with a
training phrasing of the same edit and value ("recolour it blue" -> "change the colour to blue"),
in a copy of the world's annotations, and the cached models of a finished ``isacir-lab bench shapes``
run are evaluated on it. It never changes the benchmark itself.

    python benchmarks/shapes_known_phrasings.py --bench runs/shapes --seed 2
Prints one JSON object as the last stdout line (R@1/5/10/50 and R@1 by edit type per method).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from isacir.evaluation.benchmarks import load_shapes
from isacir.evaluation.evaluate import encode_gallery, evaluate
from isacir.foundation import create_foundation
from isacir.query import QueryEncoder
from isacir_lab.shapes.bench import TRAINED, ShapesBenchConfig, _query_kinds, _recall_by_kind, oracle_rows
from isacir_lab.shapes.foundation import ARCH
from isacir_lab.shapes.phrasing import known_phrasings_copy

KS = ("R@1", "R@5", "R@10", "R@50")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--bench", type=Path, required=True, help="--out folder of a finished `isacir-lab bench shapes` run"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = ShapesBenchConfig(seed=args.seed)
    world = args.bench / "worlds" / cfg.world.key()
    fnd = create_foundation(f"openclip:{ARCH}@{args.bench / 'foundations' / cfg.foundation_key()}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = known_phrasings_copy(world, Path(tmp) / "world")
        results = evaluate_all(copy, cfg, fnd, args.bench)
    for name, r in results.items():
        print(f"{name:40s} " + "  ".join(f"{k} {r[k]:5.1f}" for k in KS))
    print(json.dumps({"seed": args.seed, "phrasings": "train", "methods": results}))


def evaluate_all(world: Path, cfg: ShapesBenchConfig, fnd, bench_dir: Path) -> dict[str, dict]:
    bench = load_shapes(world)
    kinds = _query_kinds(world)
    names = list(bench.gallery)
    gallery = encode_gallery(fnd, [bench.gallery[n] for n in names], progress=False)
    results: dict[str, dict] = {}

    def record(name: str, metrics: dict, rankings: list[list[str]]) -> None:
        results[name] = {
            **{k: round(metrics[k], 1) for k in KS},
            "R@1 by edit": _recall_by_kind(bench, rankings, kinds),
        }

    for method in ("image_plus_text", "isa_symmetric", "isa"):
        enc = None
        if method in TRAINED:
            enc = QueryEncoder.from_pretrained(
                bench_dir / "methods" / f"{method}-{cfg.method_key(method)}" / "final", foundation=fnd
            ).eval()
        metrics, rankings = evaluate(
            bench,
            fnd,
            "isa" if enc else method,
            query_encoder=enc,
            template=cfg.template,
            gallery_vecs=gallery,
            progress=False,
        )
        record(method, metrics, rankings)
    # the bench's own oracle, reading the rewritten modifiers from the copy's annotations
    oracles, oracle_rankings = oracle_rows(world, bench, fnd, gallery, names, cfg.template)
    name = "oracle_reference_caption_plus_modifier"
    record(name, oracles[name], oracle_rankings[name])
    return results


if __name__ == "__main__":
    main()
