"""``isacir-lab bench domain``: adapting the device side to a customer's own photos, on Shapes-CIR.

The customer's photos are the shifted world (other backgrounds, other light) of the same seed:
its unlabeled ``train/`` images are all the adaptation sees. The ISA encoder of a ``bench shapes``
cache continues its distillation on them (``isacir train --init-from``), and both encoders are
evaluated on the shifted world's test queries (the customer's) and on the standard ones (what the
adapted encoder may have forgotten). The foundation and the galleries' vectors do not change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from isacir._fs import atomic_write_text

from .bench import METRICS, ShapesBenchConfig, _key, cached_isa
from .world import generate

#: Continued-training settings: a short schedule at a third of the preset's learning rate.
DOMAIN_STEPS = 300
DOMAIN_LR_SCALE = 1 / 3


def run_domain_bench(
    out: str | Path,
    seed: int = 0,
    steps: int = DOMAIN_STEPS,
    replay: bool = False,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Before/after R@K on the shifted and the standard test; writes ``domain-seed{S}[-replay].json``.

    ``replay`` mixes the original unlabeled images into the adaptation set (as many as the
    customer's), the guard against forgetting the original look.
    """
    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import encode_gallery, evaluate
    from isacir.query import QueryEncoder
    from isacir.training import train

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    t0 = time.perf_counter()
    world, fnd, parent_path, parent = cached_isa(out, config, log, progress)
    shifted_cfg = replace(config.world, variant="shifted", caption_pairs=0)
    shifted = generate(out / "worlds" / shifted_cfg.key(), shifted_cfg)

    base = config.train_config("isa")
    tc = base.replace(
        init_from=str(parent_path),
        max_steps=steps,
        warmup_steps=min(base.warmup_steps, steps // 10),
        lr=base.lr * DOMAIN_LR_SCALE,
    )
    sources = [str(shifted / "train")] + ([str(world / "train")] if replay else [])
    run = out / "domain" / f"isa-{_key([config.method_key('isa'), shifted_cfg.key(), tc.to_dict(), replay])}"
    if not (run / "final" / "config.json").is_file():
        train(
            sources,
            fnd,
            run,
            tc.replace(cache_dir=str(out / "teacher-cache" / config.foundation_key()), progress=progress),
            resume=True,
            log=log,
        )
    else:
        log(f"domain: reusing {run / 'final'}")
    child = QueryEncoder.from_pretrained(run / "final", foundation=fnd).eval()

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, folder in (("shifted", shifted), ("standard", world)):
        bench = load_shapes(folder)
        vecs = encode_gallery(fnd, [bench.gallery[n] for n in bench.gallery], progress=progress)
        results[name] = {}
        for label, enc in (("before", parent), ("after", child)):
            metrics, _ = evaluate(
                bench, fnd, "isa", query_encoder=enc, template=config.template, gallery_vecs=vecs, progress=False
            )
            results[name][label] = {k: round(metrics[k], 2) for k in METRICS}
    summary = {"seed": seed, "steps": steps, "replay": replay, **results}
    detail = {
        **summary,
        "parent_fingerprint": parent.fingerprint,
        "adapted_fingerprint": child.fingerprint,
        "recorded_parent": child.config.parent_fingerprint,
        "shifted_world": asdict(shifted_cfg),
        "train": {k: v for k, v in tc.to_dict().items() if k in ("init_from", "max_steps", "lr", "warmup_steps")},
        "took_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / f"domain-seed{seed}{'-replay' if replay else ''}.json", json.dumps(detail, indent=2))
    return summary
