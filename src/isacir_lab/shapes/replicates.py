"""``isacir-lab bench replicates``: a finished ``bench feedback`` run, judged again on fresh test draws.

The feedback goals are judged on 500 test queries, and the flip goal on the hundred or so of them
answered right at rank 1 before, so a verdict can turn on one query, and the draw of the test
queries moves it as much as anything the adapter does. Replicates of the test split (the same
construction, from random streams of their own: see
:func:`~isacir_lab.shapes.world.generate_replicate`) measure the same served adapters
again, without training anything. Pooled over R replicates, the gains are measured on R times as
many queries, so their intervals shrink by about the square root of R, and the verdicts say
whether a recipe meets the goals in expectation rather than on one draw.

Nothing here feeds back into a choice: the adapters, their pairs and the pilot are those of the
run, fixed before any replicate was drawn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from isacir._fs import atomic_write_text
from isacir.bench.machine import cpu_info
from isacir.errors import IsacirError
from isacir.progress import progress_bar

from .bench import ShapesBenchConfig, cached_isa
from .feedback_bench import BENCH_ADAPT, FeedbackRun, _flip_rate, _TestSet
from .feedback_goals import (
    MAX_TEST_FLIP_RATE,
    MIN_R1_GAIN,
    feedback_goals,
    final_adapter,
    goals_met,
    verdict_intervals,
)
from .phrasing import known_phrasings_copy
from .pilot import PilotConfig
from .world import generate_replicate

if TYPE_CHECKING:
    from isacir.adapter import QueryAdapter

#: the served recipes of a ``bench feedback`` run, by their key in its JSON, and the adapter
#: folder each one serves from (``None``: the final curve adapter, at the pair the JSON records)
RECIPES: dict[str, str | None] = {
    "tuned_on_held_out": None,
    "tuned_then_refit": "adapter-refit",
    "tuned_by_folds": "adapter-folds",
}


#: the serving pairs a frontier weighs: the bench's interpolations, and guard margins from none
#: (the adapter's own first place always) to 0.12 in steps of 0.01
FRONTIER_INTERPOLATIONS = (0.5, 0.75, 1.0)
FRONTIER_MARGINS = tuple(round(0.01 * i, 2) for i in range(13))


def _hits(test: _TestSet, rankings: list[list[str]], k: int) -> list[bool]:
    """Per test query, whether one of its targets is in the top ``k``."""
    return [bool(set(r[:k]) & set(q.targets)) for q, r in zip(test.bench.queries, rankings, strict=True)]


def _adapter_folder(run: Path, detail: dict[str, Any], recipe: str | None = None) -> Path:
    """Where a served recipe's adapter lies in the run's folder; without a folder of its own (or
    without a recipe), the final curve adapter's, named for the feedback queries it learned from."""
    own = RECIPES[recipe] if recipe is not None else None
    return run / (own or f"adapter-{max(int(n) for n in detail['curve'])}")


def rerun_command(out: Path, detail: dict[str, Any]) -> str:
    """The ``bench feedback`` command that trains a recorded run's adapters again, from its settings
    (the flags that differ from the bench's defaults)."""
    settings, seed = detail["settings"], detail["seed"]
    queries = detail.get("pilot_config", {}).get("queries")
    flags = [f"--seed {seed}", f"--out {out}"]
    flags += [f"--queries {queries}"] if queries and queries != PilotConfig.queries else []
    flags += [f"--steps {settings['steps']}"] if settings.get("steps", BENCH_ADAPT.steps) != BENCH_ADAPT.steps else []
    flags += [f"--lora-rank {settings['lora_rank']}"] if settings.get("lora_rank") else []
    flags += ["--lora-attention"] if settings.get("lora_attention") else []
    flags += ["--query-head"] if settings.get("query_head") else []
    flags += ["--refit"] if settings.get("refit") else []
    flags += [f"--folds {settings['folds']}"] if settings.get("folds") else []
    flags += [f"--soup {settings['soup']}"] if settings.get("soup", 1) > 1 else []
    flags += [f"--adapt-seed {settings['seed']}"] if settings.get("seed", seed) != seed else []
    return "isacir-lab bench feedback " + " ".join(flags)


def _served_adapters(run: Path, detail: dict[str, Any], out: Path = Path("runs/shapes")) -> dict[str, QueryAdapter]:
    """The run's served adapters, checked to be the ones its JSON describes."""
    from isacir.adapter import QueryAdapter

    final = _adapter_folder(run, detail)
    recorded = final_adapter(detail)["fingerprint"]
    if not final.is_dir():
        raise IsacirError(f"{final} is missing: train the run's adapters again with {rerun_command(out, detail)}")
    found = QueryAdapter.from_pretrained(final).fingerprint
    if found != recorded:
        raise IsacirError(
            f"{final} holds adapter {found}, but the run's JSON records {recorded}: the folder belongs to "
            f"another run of this seed (a later bench feedback with other settings?). Rerun "
            f"{rerun_command(out, detail)}"
        )
    adapters: dict[str, QueryAdapter] = {}
    for name, folder in RECIPES.items():
        if name not in detail:
            continue
        served = detail[name]
        if folder is None:
            adapter = QueryAdapter.from_pretrained(
                final, interpolation=served["interpolation"], guard_margin=served["guard_margin"]
            )
        else:
            adapter = QueryAdapter.from_pretrained(run / folder)
            pair = (adapter.interpolation, adapter.guard_margin)
            if pair != (served["interpolation"], served["guard_margin"]):
                raise IsacirError(
                    f"{run / folder} serves {pair}, the run's JSON records another pair: rerun "
                    f"{rerun_command(out, detail)}"
                )
        adapters[name] = adapter
    return adapters


def _frontier_hits(test: _TestSet, folder: Path, zero_shot: np.ndarray) -> dict[tuple[float, float], list[bool]]:
    """Per serving pair of the adapter in ``folder``, whether each test query's first place is right.

    Each interpolation is composed once; the margins only decide, per query, between the adapted
    and the zero-shot first place (``zero_shot``: the zero-shot scores), as the served guard does.
    """
    from isacir.adapter import QueryAdapter, guard_rankings
    from isacir.evaluation.metrics import rank_gallery

    out: dict[tuple[float, float], list[bool]] = {}
    for a in FRONTIER_INTERPOLATIONS:
        scores = test.scores(QueryAdapter.from_pretrained(folder, interpolation=a, guard_margin=0.0))
        ranked = rank_gallery(scores, test.names, top=2)  # references already at -inf
        for m in FRONTIER_MARGINS:
            first = guard_rankings(ranked, scores, zero_shot, test.names, m) if m > 0 else ranked
            out[(a, m)] = _hits(test, first, 1)
    return out


def _first_places(right: list[bool], before1: list[bool]) -> dict[str, Any]:
    """R@1 (percent) of pooled first places, and their flips against the first places ``before1``."""
    from isacir.adapter import flip_rate

    rate, lost, had = flip_rate(np.array(before1), np.array(right))
    return {
        "R@1": round(100 * sum(right) / len(before1), 2),
        "flip_rate": None if rate is None else round(rate, 4),
        "flips": lost,
        "right_before": had,
    }


def _frontier(hits: dict[tuple[float, float], list[bool]], before1: list[bool]) -> dict[str, Any]:
    """The pooled grid of serving pairs, with the best pair within the flip goal and the largest gain."""
    n = len(before1)
    grid = []
    for (a, m), right in hits.items():
        counted = _first_places(right, before1)
        gain = round(100 * (sum(right) - sum(before1)) / n, 2)
        grid.append({"interpolation": a, "guard_margin": m, "R@1": counted["R@1"], "R@1_gain": gain, **counted})
    within = [g for g in grid if g["flip_rate"] is not None and g["flip_rate"] <= MAX_TEST_FLIP_RATE]
    # ties go to the first pair in grid order: the lower interpolation, then the smaller margin
    best = max(within, key=lambda g: g["R@1"], default=None)
    return {
        "grid": grid,
        "best_within_flip_goal": best,
        "largest_gain": max(grid, key=lambda g: g["R@1"]),
        "gain_goal_within_flip_goal": best is not None and best["R@1_gain"] >= MIN_R1_GAIN,
    }


def _pooled(hits: dict[str, list[bool]], before1: list[bool]) -> dict[str, Any]:
    """R@1, R@10 (percent) and the flip rate against ``before1`` over the pooled queries."""
    counted = _first_places(hits["R@1"], before1)
    return {"R@1": counted["R@1"], "R@10": round(100 * sum(hits["R@10"]) / len(before1), 2), **counted}


def run_replicates(
    out: str | Path,
    run: FeedbackRun,
    count: int = 4,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    frontier: str | None = None,
) -> dict[str, Any]:
    """Evaluate a ``bench feedback`` run's served adapters on ``count`` replicates of its test split.

    Writes ``{run.replicates_stem}.json`` into ``out`` and returns its summary: per served
    recipe, the pooled numbers, the goals judged on them, and the R@1-gain and flip-rate intervals.

    ``frontier`` (a served recipe's name): also weigh that recipe's adapter at every serving pair
    of :data:`FRONTIER_INTERPOLATIONS` x :data:`FRONTIER_MARGINS` on the same queries, to tell
    whether the pair the pilot chose or the adapter itself holds the gain where it is. The grid
    peeks at the replicates, so it bounds what a choice could reach; it chooses nothing.
    """
    if count < 1:
        raise IsacirError(f"--count must be at least 1, got {count}")
    if frontier is not None and frontier not in RECIPES:
        raise IsacirError(f"--frontier must name a served recipe ({', '.join(RECIPES)}), got {frontier!r}")
    out = Path(out)
    seed = run.seed
    config = config or ShapesBenchConfig(seed=seed)
    record = out / f"{run.stem}.json"
    if not record.is_file():
        command = f"isacir-lab bench feedback --seed {seed}{run.flags()}"
        raise IsacirError(f"no bench feedback run at {record}: run {command} first")
    detail = json.loads(record.read_text())
    pilot = PilotConfig(**detail["pilot_config"])
    folder = run.folder(out, pilot, config.world)
    t0 = time.perf_counter()
    adapters = _served_adapters(folder, detail, out)
    if not adapters:
        raise IsacirError(f"{record} records no served recipe ({', '.join(RECIPES)})")
    if frontier is not None and frontier not in adapters:
        raise IsacirError(f"{record} records no {frontier!r} recipe to weigh; it serves {', '.join(adapters)}")
    frontier_folder = _adapter_folder(folder, detail, frontier) if frontier else None
    frontier_hits: dict[tuple[float, float], list[bool]] = {}
    _, fnd, _, qe = cached_isa(out, config, log, progress)

    root = out / "worlds" / f"{config.world.key()}.replicates"
    before1: list[bool] = []
    before10: list[bool] = []
    known_before10: list[bool] = []
    pooled_hits = {name: {"R@1": [], "R@10": [], "known": []} for name in adapters}
    per_replicate = []
    for index in progress_bar(range(1, count + 1), desc="replicates", unit="replicate", disable=not progress):
        world = generate_replicate(root / str(index), config.world, index)
        test = _TestSet(world, fnd, qe, config.template, progress=False)
        known = _TestSet(
            known_phrasings_copy(world, root / f"{index}-known-phrasings"),
            fnd,
            qe,
            config.template,
            progress=False,
            gallery_vecs=test.gallery_vecs,
        )
        metrics, rank = test.evaluate(None)
        known_metrics, known_rank = known.evaluate(None)
        before1 += _hits(test, rank, 1)
        before10 += _hits(test, rank, 10)
        known_before10 += _hits(known, known_rank, 10)
        row: dict[str, Any] = {"index": index, "before": metrics, "known_phrasings_before": known_metrics}
        for name, adapter in adapters.items():
            after, after_rank = test.evaluate(adapter)
            known_after, known_after_rank = known.evaluate(adapter)
            pooled_hits[name]["R@1"] += _hits(test, after_rank, 1)
            pooled_hits[name]["R@10"] += _hits(test, after_rank, 10)
            pooled_hits[name]["known"] += _hits(known, known_after_rank, 10)
            row[name] = {
                "R@1": after["R@1"],
                "R@10": after["R@10"],
                "flip_rate": _flip_rate(test, rank, after_rank),
                "known_phrasings_R@10": known_after["R@10"],
            }
            row[name]["every_goal"] = goals_met(
                feedback_goals(metrics, after, row[name]["flip_rate"], known_metrics, {"R@10": known_after["R@10"]})
            )
        if frontier_folder is not None:
            for pair, right in _frontier_hits(test, frontier_folder, test.scores(None)).items():
                frontier_hits.setdefault(pair, []).extend(right)
        per_replicate.append(row)
        log(
            f"replicate {index}: R@1 before {metrics['R@1']}; "
            + ", ".join(f"{name} {row[name]['R@1']} (flips {row[name]['flip_rate']})" for name in adapters)
        )

    n = len(before1)
    before = {"R@1": round(100 * sum(before1) / n, 2), "R@10": round(100 * sum(before10) / n, 2)}
    known_before = {"R@10": round(100 * sum(known_before10) / n, 2)}
    pooled: dict[str, Any] = {"before": before, "known_phrasings_before": known_before}
    for name, hits in pooled_hits.items():
        served = _pooled(hits, before1)
        known_after = {"R@10": round(100 * sum(hits["known"]) / n, 2)}
        goals = feedback_goals(before, served, served["flip_rate"], known_before, known_after)
        pooled[name] = {
            "interpolation": adapters[name].interpolation,
            "guard_margin": adapters[name].guard_margin,
            **served,
            "known_phrasings_R@10": known_after["R@10"],
            "goals": goals,
            "every_goal": goals_met(goals),
            "intervals": verdict_intervals(before, served, n) if served["right_before"] else None,
            "replicates_meeting_every_goal": sum(r[name]["every_goal"] for r in per_replicate),
        }
    result = {
        "seed": seed,
        "bench": record.name,
        # the run judged again: its recipe, its final adapter (which names the run: another CPU or
        # setting trains other weights) and the machine that trained it, where the run recorded it
        "settings": detail["settings"],
        "run_fingerprint": final_adapter(detail)["fingerprint"],
        "run_cpu": detail.get("cpu"),
        "adapters": {name: adapter.fingerprint for name, adapter in adapters.items()},
        "replicates": count,
        "queries": n,
        "cpu": cpu_info(),
        "pooled": pooled,
        **({"frontier": {"recipe": frontier, **_frontier(frontier_hits, before1)}} if frontier else {}),
        "per_replicate": per_replicate,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / f"{run.replicates_stem}.json", json.dumps(result, indent=2))
    summary: dict[str, Any] = {
        "seed": seed,
        "replicates": count,
        "queries": n,
        "before": before,
        **{
            name: {k: pooled[name][k] for k in ("R@1", "R@10", "flip_rate", "known_phrasings_R@10", "every_goal")}
            for name in adapters
        },
    }
    if frontier:
        summary["frontier"] = {k: result["frontier"][k] for k in ("recipe", "best_within_flip_goal", "largest_gain")}
    return summary
