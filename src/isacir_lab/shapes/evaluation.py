"""The evaluation stream of ``bench feedback``: fresh queries that no choice has seen, and what they say.

The world's 500 test queries and the replicates of them were looked at while the adapter recipes
were developed, so numbers on them are development numbers. The evaluation stream is drawn from
random streams of its own (``evaluation-{seed}-{block}``), built as the test split is (held-out
phrasings, hard negatives, distractors), in blocks of the test split's size with a gallery each.
Nothing chooses anything on it: the recipe, its pair and every threshold are fixed by the pilot's
own folds before the stream is read. With ``avoid``, queries whose reference or target shows an
object set the pilot showed are drawn again, so that what is measured cannot be recall of a
pilot picture.

Each query is judged before and after, at rank 1 and within 10, and split the way that matters:
phrasings the operators used against phrasings they never used (read from what they typed, in
the log), and per edit type.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from isacir._fs import atomic_write_text, replace_dir
from isacir.intervals import gain_interval, wilson

from .phrasing import parse_modifier
from .world import ShapesConfig, write_test_split

if TYPE_CHECKING:
    from isacir.adapter import QueryAdapter
    from isacir.foundation import Foundation
    from isacir.query import QueryEncoder

#: blocks of the evaluation stream, each as large as the test split (4 x 500 queries by default)
EVAL_BLOCKS = 4
#: bumped whenever a block's output changes for the same world, index and avoided object sets
EVALUATION_FORMAT = 1


def evaluation_key(config: ShapesConfig, index: int, avoid: Iterable[tuple] = ()) -> str:
    avoided = hashlib.blake2b(json.dumps(sorted(avoid)).encode(), digest_size=6).hexdigest()
    raw = json.dumps([EVALUATION_FORMAT, config.key(), index, avoided], sort_keys=True).encode()
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


def generate_evaluation(out: str | Path, config: ShapesConfig, index: int, avoid: Iterable[tuple] = ()) -> Path:
    """Write block ``index`` (from 1) of the evaluation stream to ``out`` (cached by its key), with
    ``objects.json``: each query's reference and target object sets."""
    if index < 1:
        raise ValueError(f"evaluation block index must be at least 1, got {index}")
    avoid = frozenset(avoid)
    out = Path(out)
    key = evaluation_key(config, index, avoid)
    done = out / "evaluation.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    scenes = write_test_split(
        tmp,
        config,
        random.Random(f"evaluation-{config.seed}-{index}"),
        random.Random(f"evaluation-captions-{config.seed}-{index}"),
        avoid=avoid,
        # a bilingual world's blocks word each query in Japanese too (a stream of its own)
        ja_rng=random.Random(f"evaluation-japanese-{config.seed}-{index}") if config.japanese_fraction > 0 else None,
    )
    atomic_write_text(tmp / "objects.json", json.dumps(scenes))
    doc = {"key": key, "index": index, "world": asdict(config), "avoided_object_sets": len(avoid)}
    atomic_write_text(tmp / "evaluation.json", json.dumps(doc))
    replace_dir(tmp, out)
    return out


@dataclass
class Judged:
    """Per evaluation query, pooled over the blocks: what it is, and whether it was answered."""

    kind: list[str] = field(default_factory=list)
    phrasing: list[str] = field(default_factory=list)
    modifier: list[str] = field(default_factory=list)
    target_objects: list[tuple] = field(default_factory=list)
    ref_objects: list[tuple] = field(default_factory=list)
    #: hits per arm: ``before`` / ``after`` at 1 and 10, ``known_before`` / ``known_after`` at 10
    #: (the same edits in training phrasings), ``oracle`` at 1 (true reference caption + modifier)
    hits: dict[str, list[bool]] = field(default_factory=dict)

    def add(self, name: str, values: Iterable[bool]) -> None:
        self.hits.setdefault(name, []).extend(bool(v) for v in values)

    def arr(self, name: str) -> np.ndarray:
        return np.array(self.hits[name], dtype=bool)

    def __len__(self) -> int:
        return len(self.kind)


def judge_stream(
    blocks: list[Path],
    fnd: Foundation,
    qe: QueryEncoder,
    template: str,
    adapter: QueryAdapter,
    scratch: Path,
    progress: bool = False,
    others: dict[str, QueryAdapter] | None = None,
    language: str = "en",
) -> Judged:
    """Evaluate zero-shot and ``adapter`` (as served: its pair and guard) on every block, with
    modifiers in ``language`` (``template`` must be that language's).

    ``others`` are judged in the same pass, on the same encoded galleries, as arms ``{name}@1`` and
    ``{name}@10`` (a learning curve's adapters)."""
    from .bench import oracle_rows
    from .feedback_bench import _TestSet
    from .phrasing import known_phrasings_copy

    judged = Judged()
    for block in blocks:
        test = _TestSet(block, fnd, qe, template, progress, language=language)
        known = _TestSet(
            known_phrasings_copy(block, scratch / f"known-{block.name}", language),
            fnd,
            qe,
            template,
            progress,
            gallery_vecs=test.gallery_vecs,
            language=language,
        )
        queries = test.bench.queries
        objects = json.loads((block / "objects.json").read_text())
        for q, o in zip(queries, objects, strict=True):
            kind = test.kinds[q.qid]
            judged.kind.append(kind)
            judged.modifier.append(q.modifiers[0])
            judged.phrasing.append(parse_modifier(kind, q.modifiers[0], language=language)[1])
            judged.target_objects.append(tuple(tuple(x) for x in o["target_objects"]))
            judged.ref_objects.append(tuple(tuple(x) for x in o["ref_objects"]))
        for name, source, with_adapter in (
            ("before", test, None),
            ("after", test, adapter),
            ("known_before", known, None),
            ("known_after", known, adapter),
        ):
            _, ranked = source.evaluate(with_adapter)
            judged.add(f"{name}@1", _hits(queries, ranked, 1))
            judged.add(f"{name}@10", _hits(queries, ranked, 10))
        for name, other in (others or {}).items():
            _, ranked = test.evaluate(other)
            judged.add(f"{name}@1", _hits(queries, ranked, 1))
            judged.add(f"{name}@10", _hits(queries, ranked, 10))
        _, oracle = oracle_rows(block, test.bench, fnd, test.gallery_vecs, test.names, template, language)
        if "oracle_reference_caption_plus_modifier" in oracle:
            judged.add("oracle@1", _hits(queries, oracle["oracle_reference_caption_plus_modifier"], 1))
    return judged


def _hits(queries: list, rankings: list[list[str]], k: int) -> list[bool]:
    return [bool(set(r[:k]) & set(q.targets)) for q, r in zip(queries, rankings, strict=True)]


def pct(x: np.ndarray) -> float | None:
    """A hit rate in percent, to two decimals (None for no queries)."""
    return round(100 * float(x.mean()), 2) if len(x) else None


def _change(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Paired change of a hit rate, in points, with its 95 % interval."""
    gained, lost, n = int((after & ~before).sum()), int((before & ~after).sum()), len(before)
    lo, hi = gain_interval(gained, lost, n) if n else (float("nan"), float("nan"))
    return {
        "points": round(100 * (gained - lost) / n, 2) if n else None,
        "ci": [round(100 * lo, 2), round(100 * hi, 2)],
    }


def served_report(judged: Judged, used: set[tuple[str, str]]) -> dict[str, Any]:
    """The ``served`` block of ``bench feedback``'s JSON: numbers in percent, intervals at 95 %."""
    b1, a1, b10, a10 = (judged.arr(n) for n in ("before@1", "after@1", "before@10", "after@10"))
    right, lost = int(b1.sum()), int((b1 & ~a1).sum())
    flip_ci = wilson(lost, right)
    seen = np.array([(k, p) in used for k, p in zip(judged.kind, judged.phrasing, strict=True)], dtype=bool)

    def part(mask: np.ndarray) -> dict[str, Any]:
        return {
            "before": {"R@1": pct(b1[mask]), "R@10": pct(b10[mask])},
            "after": {"R@1": pct(a1[mask]), "R@10": pct(a10[mask])},
            "R@1_change": _change(b1[mask], a1[mask]),
            "n": int(mask.sum()),
        }

    kinds = np.array(judged.kind)
    return {
        "queries": len(judged),
        "before": {"R@1": pct(b1), "R@10": pct(b10)},
        "after": {"R@1": pct(a1), "R@10": pct(a10)},
        "R@1_change": _change(b1, a1),
        "R@10_change": _change(b10, a10),
        "flip_rate": round(100 * lost / right, 2) if right else None,
        "flips": lost,
        "right_before": right,
        "flip_ci": [round(100 * flip_ci[0], 2), round(100 * flip_ci[1], 2)] if flip_ci else None,
        "phrasings": {"used": part(seen), "unseen": part(~seen)},
        "per_edit": {k: part(kinds == k) for k in sorted(set(judged.kind))},
        "known_phrasings": {
            "before": {"R@10": pct(judged.arr("known_before@10"))},
            "after": {"R@10": pct(judged.arr("known_after@10"))},
        },
        **({"oracle": {"R@1": pct(judged.arr("oracle@1"))}} if "oracle@1" in judged.hits else {}),
    }


def overlap_report(judged: Judged, pilot_objects: set[tuple], pilot_texts: Iterable[str]) -> dict[str, Any]:
    """How much of the evaluation stream the pilot already showed: object sets and exact modifiers."""
    texts = Counter(pilot_texts)
    n = max(1, len(judged))
    return {
        "target_object_sets_in_pilot": round(100 * sum(t in pilot_objects for t in judged.target_objects) / n, 2),
        "reference_object_sets_in_pilot": round(100 * sum(r in pilot_objects for r in judged.ref_objects) / n, 2),
        "modifiers_typed_in_pilot": round(100 * sum(m in texts for m in judged.modifier) / n, 2),
    }
