"""``isacir-lab bench phrasings``: which adapter ideas carry to phrasings the operators never used,
measured on the pilot's own feedback (never on the evaluation stream).

The pilot's judged queries are grouped by the phrasing their operator typed. Each group is held
out in turn: adapters are trained on every other group and answer the held-out one, whose words
they have never seen, exactly as the evaluation stream's unseen phrasings will be answered. The
pooled hit@1 over every held-out group, against zero-shot's, says how much an idea transfers to
new wording; the same folds judge every idea, so their differences are paired.

An idea that the folds support can become a candidate of ``isacir adapt``'s default; the others
are recorded as tried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from isacir._fs import atomic_write_text
from isacir.errors import IsacirError
from isacir.intervals import gain_interval

from .phrasing import used_phrasings

#: the ideas weighed, by name: the fields each sets on the adapter settings. Each is an addition
#: to the default's cheaper candidate (``vocab``), the one whose gain rests most on the operators'
#: own words
IDEAS: dict[str, dict[str, Any]] = {
    "vocab": {},
    "vocab + word dropout 0.2": {"word_dropout": 0.2},
    "vocab + vocabulary decay 1": {"vocab_decay": 1.0},
}
#: a phrasing needs this many judged queries to be held out as a group of its own
MIN_GROUP = 15


def phrasing_of(text: str) -> tuple[str, str] | None:
    """The (edit type, phrasing) a modifier is worded in, or None when it matches none or several
    (a phrasing that two edit types share cannot be told apart from the words alone)."""
    found = used_phrasings([text])
    return next(iter(found)) if len(found) == 1 else None


def run_phrasing_folds(
    run_dir: str | Path,
    paths: dict[str, str],
    out: str | Path,
    seed: int = 0,
    ideas: dict[str, dict[str, Any]] | None = None,
    steps: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Leave-one-phrasing-out over a ``bench feedback`` run's log (``run_dir``), for every idea."""
    import numpy as np

    from isacir.adapt import AdaptSettings, ComposedQueries, feedback_metrics, load_feedback
    from isacir.adapt.fit import _Fit
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder

    ideas = ideas or IDEAS
    run_dir, out = Path(run_dir), Path(out)
    db = run_dir / "feedback.sqlite"
    if not db.is_file():
        raise IsacirError(f"{run_dir} holds no feedback.sqlite: run isacir-lab bench feedback --seed {seed} first")
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()
    gallery = Gallery.open(paths["gallery"])
    base = AdaptSettings(seed=seed, **({"steps": steps} if steps else {}))
    data = load_feedback(FeedbackStore(db), qe.fingerprint, qe.num_tokens, fnd.word_dim, gallery, base.max_replay, seed)
    labels = [phrasing_of(t.text) for t in data.triplets]
    sizes: dict[tuple[str, str], int] = {}
    for label in labels:
        if label is not None:
            sizes[label] = sizes.get(label, 0) + 1
    # a group is held out only when something else is left to train on
    groups = sorted(g for g, n in sizes.items() if MIN_GROUP <= n < len(data.triplets))
    if not groups:
        raise IsacirError(f"no phrasing has {MIN_GROUP} judged queries in {db}")
    compose = ComposedQueries(fnd, qe.config.template, qe.num_tokens)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    before_hits: list[bool] = []
    per_group: dict[str, dict[str, Any]] = {}
    for gi, group in enumerate(groups):
        held = [t for t, label in zip(data.triplets, labels, strict=True) if label == group]
        train = [t for t, label in zip(data.triplets, labels, strict=True) if label != group]
        _, top1_before = feedback_metrics(compose, gallery, held, None)
        before_hits.extend(top1_before.tolist())
        name = f"{group[0]}: {group[1]}"
        per_group[name] = {"n": len(held), "before": float(top1_before.mean())}
        for idea, fields in ideas.items():
            settings = replace(base, **fields)
            fit = _Fit(gallery, fnd, qe.fingerprint, compose, data, settings, None, progress)
            adapter, _ = fit(train, out / ".phrasing-folds-checkpoint.pt", desc=f"{name} / {idea}")
            _, top1 = feedback_metrics(compose, gallery, held, adapter)
            cell = results.setdefault(idea, {"hits": []})
            cell["hits"].extend(top1.tolist())
            per_group[name][idea] = float(top1.mean())
            log(f"group {gi + 1}/{len(groups)} {name} ({len(held)}): {idea} hit@1 {top1.mean():.3f} "
                f"(zero-shot {top1_before.mean():.3f})")  # fmt: skip
    gallery.close()
    before = np.array(before_hits, dtype=bool)
    summary: dict[str, Any] = {"queries": int(len(before)), "before_hit@1": round(100 * float(before.mean()), 2)}
    for idea, cell in results.items():
        after = np.array(cell["hits"], dtype=bool)
        gained, lost = int((after & ~before).sum()), int((before & ~after).sum())
        lo, hi = gain_interval(gained, lost, len(before))
        summary[idea] = {
            "hit@1": round(100 * float(after.mean()), 2),
            "gain": round(100 * (gained - lost) / len(before), 2),
            "gain_ci": [round(100 * lo, 2), round(100 * hi, 2)],
            "gained": gained,
            "lost": lost,
        }
    detail = {
        "seed": seed,
        "run": str(run_dir),
        "groups": per_group,
        "ideas": ideas,
        "settings": asdict(base),
        "summary": summary,
        "took_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / f"phrasings-seed{seed}.json", json.dumps(detail, indent=2))
    (out / ".phrasing-folds-checkpoint.pt").unlink(missing_ok=True)
    return summary
