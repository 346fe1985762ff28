"""The tables of learning from operators: bench feedback runs, their replicates, reruns and variants."""

from __future__ import annotations

import json
from typing import Any

from ..shapes.feedback_goals import (
    MAX_TEST_FLIP_RATE,
    MIN_R1_GAIN,
    feedback_goals,
    final_adapter,
    goals_met,
    paired_counts,
    verdict_intervals,
)
from .cells import _arrow, fmt
from .paths import RESULTS

#: the ``isacir adapt`` options that the development runs with the oracle operator chose as the
#: recipe to deploy, before the default chose its recipe by folds; the tables of those runs name it
RECIPE_TO_DEPLOY: dict[str, Any] = {"lora_rank": 4, "lora_attention": True, "soup": 5, "folds": 5}


def recipe_flags(recipe: dict[str, Any] = RECIPE_TO_DEPLOY) -> str:
    """``isacir adapt --recipe custom`` options for a recipe (the pair always chosen by ``--tune``)."""
    flags = [f"--lora-rank {recipe['lora_rank']}"] if recipe.get("lora_rank") else []
    flags += ["--lora-attention"] if recipe.get("lora_attention") else []
    flags += [f"--soup {recipe['soup']}"] if recipe.get("soup", 1) > 1 else []
    flags += ["--tune"] + ([f"--folds {recipe['folds']}"] if recipe.get("folds") else [])
    return " ".join(flags)


def load_feedback_runs() -> list[dict]:
    """The runs of record of the default recipe: adapters trained with the world's own seed."""
    runs = (json.loads(p.read_text()) for p in RESULTS.glob("feedback-seed*.json"))
    return sorted((r for r in runs if _training_seed(r) == r["seed"]), key=lambda r: r["seed"])


def load_training_seeds() -> list[dict]:
    """``bench feedback`` runs with another adapter training seed (``--adapt-seed``), recorded for
    their replicates: how much of a pooled verdict the training seed moves."""
    return [json.loads(p.read_text()) for p in sorted((RESULTS / "training-seeds").glob("feedback-*.json"))]


def load_variants() -> tuple[list[dict], list[dict]]:
    """``bench feedback`` runs of a recipe variant (``--query-head``) and their ``bench replicates``
    runs, recorded apart from the recipes the product pages describe."""
    files = sorted((RESULTS / "variants").glob("feedback-*.json"))
    runs = [json.loads(p.read_text()) for p in files if "-replicates" not in p.name]
    return runs, [json.loads(p.read_text()) for p in files if "-replicates" in p.name]


def load_reruns() -> list[dict]:
    """``bench feedback`` runs of a recorded command repeated on another CPU model."""
    return [json.loads(p.read_text()) for p in sorted((RESULTS / "reruns").glob("feedback-*.json"))]


def _training_seed(run: dict) -> int:
    return run["settings"].get("seed", run["seed"])


def _by_recipe(run: dict) -> tuple[int, int, int, tuple[bool, bool, int]]:
    """The order of a seed's rows: by world seed, LoRA rank, training seed, then the variants."""
    settings = run["settings"]
    variants = (bool(settings.get("lora_attention")), bool(settings.get("query_head")), settings.get("soup", 1))
    return run["seed"], settings.get("lora_rank", 0), _training_seed(run), variants


def feedback_table(runs: list[dict]) -> str:
    """`bench feedback` per seed: test before/after, the curve, forgetting, flips, goals."""
    if not runs:
        return "No `bench feedback` run is recorded yet.\n"
    lines = [
        "| seed | test R@1 | test R@10 | R@1 after 100 / 300 / 1000 | known-phrasings R@10 "
        "| unseen-phrasings R@1 | flip rate | flip rate, rephrasing only |",
        "|---:|---|---|---|---|---|---:|---:|",
    ]
    for r in runs:
        b, a, curve = r["before"], r["after"], r["curve"]
        kb, ka = r["known_phrasings"]["before"], r["known_phrasings"]["after"]
        ub, ua = r["unseen_phrasings"]["before"], r["unseen_phrasings"]["after"]
        points = " / ".join(fmt(curve[n]["R@1"]) for n in sorted(curve, key=int))
        lines.append(
            f"| {r['seed']} | {_arrow(b['R@1'], a['R@1'])} | {_arrow(b['R@10'], a['R@10'])} | {points} "
            f"| {_arrow(kb['R@10'], ka['R@10'])} | {_arrow(ub['R@1'], ua['R@1'])} "
            f"| {100 * r['flip_rate']:.1f} % | {100 * r['flip_rate_rephrasing_only']:.1f} % |"
        )
    goals = list(runs[0]["goals"])
    lines += ["", "| goal | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for g in goals:
        lines.append(f"| {g} | " + " | ".join("met" if r["goals"].get(g) else "**missed**" for r in runs) + " |")
    oracle = [r for r in runs if r.get("oracle_reference_caption_plus_modifier")]
    if oracle:
        lines += [
            "",
            "The moonshot's yardstick, R@1 of the oracle that reads the reference's true caption: "
            + ", ".join(f"{r['oracle_reference_caption_plus_modifier']['R@1']:.1f} (seed {r['seed']})" for r in oracle)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _tradeoff_row(seed: int, knobs: list[str], before: dict, m: dict) -> str:
    """One setting of the final adapter: its knobs, test R@1 and R@10 against before, flip rate."""
    return (
        f"| {seed} | {' | '.join(knobs)} | {_arrow(before['R@1'], m['R@1'])} | {_arrow(before['R@10'], m['R@10'])} "
        f"| {100 * m['flip_rate']:.1f} % |"
    )


def feedback_tradeoff_table(runs: list[dict]) -> str:
    """The final adapter at several interpolations: the gain it keeps against the flips it causes."""
    runs = [r for r in runs if r.get("interpolation_tradeoff")]
    if not runs:
        return "No `bench feedback` run with the interpolation trade-off is recorded yet.\n"
    lines = ["| seed | interpolation | test R@1 | test R@10 | flip rate |", "|---:|---:|---|---|---:|"]
    for r in runs:
        b = r["before"]
        for a, m in sorted(r["interpolation_tradeoff"].items(), key=lambda kv: float(kv[0])):
            lines.append(_tradeoff_row(r["seed"], [f"{float(a):.2f}"], b, m))
    lines += [
        "",
        "Yardsticks with the same model and no adapter: only the test modifiers rewritten in training phrasings: "
        + ", ".join(f"{100 * r['flip_rate_rephrasing_only']:.1f} % (seed {r['seed']})" for r in runs)
        + "; only the tokens rounded to the int4 payload: "
        + ", ".join(f"{100 * r['flip_rate_int4_payload']:.1f} % (seed {r['seed']})" for r in runs)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def feedback_guard_table(runs: list[dict]) -> str:
    """The final adapter with the top-1 guard: interpolation by margin, the gain against the flips."""
    runs = [r for r in runs if r.get("guarded_tradeoff")]
    if not runs:
        return "No `bench feedback` run with the top-1 guard is recorded yet.\n"
    lines = ["| seed | interpolation | margin | test R@1 | test R@10 | flip rate |", "|---:|---:|---:|---|---|---:|"]
    for r in runs:
        b = r["before"]
        for m in sorted(r["guarded_tradeoff"].values(), key=lambda m: (m["interpolation"], m["margin"])):
            lines.append(_tradeoff_row(r["seed"], [f"{m['interpolation']:.2f}", f"{m['margin']:.2f}"], b, m))
    return "\n".join(lines) + "\n"


def _recipe(run: dict, soup: bool = True) -> str:
    """A run's recipe for people; ``soup=False`` for what it trains as one adapter (its learning
    curve, and the pair tuned on its held-out fifth) where its served adapters are soups."""
    rank = run["settings"].get("lora_rank", 0)
    recipe = f"+ LoRA rank {rank}" if rank else "default (token adapter + vocabulary)"
    if run["settings"].get("lora_attention"):
        recipe += ", attention LoRA"
    if run["settings"].get("query_head"):
        recipe += ", query head"
    soups = run["settings"].get("soup", 1)
    if soups > 1:
        recipe += f", soups of {soups}" if soup else ", one adapter"
    seed = _training_seed(run)
    return recipe if seed == run["seed"] else f"{recipe}, training seed {seed}"


def _tuned_runs(runs: list[dict]) -> list[dict]:
    """Runs with ``--tune``, by seed, then recipe, then training seed (the world's first)."""
    return sorted(
        (r for r in runs if r.get("tuned_on_held_out")),
        key=lambda r: (r["seed"], r["settings"].get("lora_rank", 0), _training_seed(r) != r["seed"], _training_seed(r)),
    )


def _served(run: dict) -> list[tuple[str, dict, dict | None, dict | None]]:
    """(recipe label, test numbers, the held-out numbers that chose its pair, and theirs before) of
    what ``--tune`` serves, and of ``--tune --refit`` and ``--tune --folds K`` where measured."""
    tuned = run["tuned_on_held_out"]
    chose = (tuned["held_out"], tuned["held_out_before"])
    served = [(_recipe(run, soup=False), tuned, *chose)]
    if run.get("tuned_then_refit"):
        refit = run["tuned_then_refit"]
        served.append((f"{_recipe(run)}, refit on all {refit['trained_on']:,}", refit, *chose))
    if run.get("tuned_by_folds"):
        cv = run["tuned_by_folds"]
        label = f"{_recipe(run)}, {cv['folds']}-fold tuned, trained on all {cv['trained_on']:,}"
        served.append((label, cv, cv["held_out"], cv["held_out_before"]))
    return served


def _every_goal(run: dict, served: dict) -> str:
    """The verdict on every goal at once (gain, forgetting, flips) of an adapter served in ``run``."""
    ka = served.get("known_phrasings_R@10")
    known = None if ka is None else {"R@10": ka}
    goals = feedback_goals(run["before"], served, served["flip_rate"], run["known_phrasings"]["before"], known)
    return "missed" if not goals_met(goals) else ("not measured" if ka is None else "**met**")


def feedback_tuned_table(runs: list[dict]) -> str:
    """What ``isacir adapt --tune`` (and ``--tune --refit``) serves for each recipe: the pair the
    held-out feedback picks, its test numbers, and whether it meets every goal of the issue (gain,
    forgetting, flips)."""
    runs = _tuned_runs(runs)
    if not runs:
        return "No `bench feedback` run with `--tune` is recorded yet.\n"
    lines = [
        "| seed | recipe | interpolation | margin | held-out hit@1 | held-out flips | test R@1 | test R@10 "
        "| test flip rate | known-phrasings R@10 | every goal |",
        "|---:|---|---:|---:|---|---:|---|---|---:|---|---|",
    ]
    for r in runs:
        b = r["before"]
        for recipe, s, h, hb in _served(r):
            held = f"{hb['hit@1']:.3f} → {h['hit@1']:.3f}" if h else "no promotable pair"
            flips = f"{h['flips']} ({100 * h['flip_rate']:.1f} %)" if h else "–"
            kb = r["known_phrasings"]["before"]["R@10"]
            ka = s.get("known_phrasings_R@10")
            known = "–" if ka is None else _arrow(kb, ka)
            verdict = _every_goal(r, s)
            lines.append(
                f"| {r['seed']} | {recipe} | {s['interpolation']:.2f} | {s['guard_margin']:.2f} | {held} | {flips} "
                f"| {_arrow(b['R@1'], s['R@1'])} | {_arrow(b['R@10'], s['R@10'])} | {100 * s['flip_rate']:.1f} % "
                f"| {known} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def _verdict(goal: dict) -> str:
    word = "**met**" if goal["met"] else "missed"
    return word if goal["decided"] else f"{word}, within noise"


def _gain_cell(g: dict) -> str:
    """An R@1 gain with its 95 % interval (``verdict_intervals``' ``r1_gain``)."""
    return f"{g['points']:+.1f} ({g['interval'][0]:+.1f} to {g['interval'][1]:+.1f})"


def _flips_cell(f: dict) -> str:
    """Flips of the earlier top-1 hits with the rate's 95 % interval (``verdict_intervals``' ``flip_rate``)."""
    lo, hi = f["interval"]
    return f"{f['flips']} of {f['of']}: {100 * f['rate']:.1f} % ({100 * lo:.1f} to {100 * hi:.1f} %)"


def feedback_intervals_table(runs: list[dict]) -> str:
    """How sure the gain and flip verdicts of the ``--tune`` table are: 95 % intervals of the test
    R@1 gain (paired) and of the flip rate, and whether each interval clears its threshold."""
    runs = _tuned_runs(runs)
    if not runs:
        return "No `bench feedback` run with `--tune` is recorded yet.\n"
    lines = [
        "| seed | recipe | test R@1 gain (95 % interval) | R@1 goal | test flips (95 % interval) | flip goal |",
        "|---:|---|---|---|---|---|",
    ]
    noisy = total = 0
    for r in runs:
        for recipe, s, _, _ in _served(r):
            v = verdict_intervals(r["before"], s, r["test_queries"])
            g, f = v["r1_gain"], v["flip_rate"]
            noisy += (not g["decided"]) + (not f["decided"])
            total += 2
            lines.append(
                f"| {r['seed']} | {recipe} | {_gain_cell(g)} | {_verdict(g)} | {_flips_cell(f)} | {_verdict(f)} |"
            )
    lines += ["", f"{noisy} of these {total} verdicts are within noise: their interval contains the goal's threshold."]
    return "\n".join(lines) + "\n"


def _cpu(run: dict) -> str:
    cpu = run.get("cpu")
    return cpu["model"] if cpu else "not recorded"


def _same_recipe(a: dict, b: dict) -> bool:
    keys = ("lora_rank", "refit", "folds", "query_head", "lora_attention")  # absent from older runs: 0 or off
    return (
        a["seed"] == b["seed"]
        and _training_seed(a) == _training_seed(b)
        and all((a["settings"].get(k) or 0) == (b["settings"].get(k) or 0) for k in keys)
        and a["settings"].get("soup", 1) == b["settings"].get("soup", 1)
    )


#: the settings that make a run a variant of a recipe, off
_NO_VARIANT = {"query_head": False, "lora_attention": False, "soup": 1}


def _with_settings(run: dict, **settings: object) -> dict:
    """``run`` as if recorded with ``settings`` changed: what a recipe comparison looks for."""
    return {**run, "settings": {**run["settings"], **settings}}


def _beside_their_base(variants: list[dict], replicates: list[dict]) -> list[dict]:
    """Each variant's replicates, after the replicates of the run it varies (same seed, training
    seed, LoRA rank, refit and folds, without the variant), so a table shows them side by side."""
    shown: list[dict] = []
    for var in variants:
        base = next(
            (r for r in replicates if _same_recipe(r, _with_settings(var, **_NO_VARIANT))),
            None,
        )
        if base is None:
            raise SystemExit(f"the variant replicates of seed {var['seed']} have no replicates of the recipe they vary")
        shown += [r for r in (base, var) if r not in shown]
    return shown


def feedback_reruns_table(records: list[dict], reruns: list[dict]) -> str:
    """Each rerun of a recorded ``bench feedback`` command on another CPU beside its run of record:
    the pair each served recipe got, its test gain and flips, and the verdict on every goal."""
    if not reruns:
        return "No rerun on another CPU is recorded yet.\n"
    lines = [
        "| seed | recipe | CPU | before R@1 | interpolation | margin | test R@1 | test flips | every goal |",
        "|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for rerun in sorted(reruns, key=_by_recipe):
        record = next((r for r in records if _same_recipe(r, rerun)), None)
        if record is None:
            raise SystemExit(f"rerun of seed {rerun['seed']} has no run of record with the same settings")
        for run in (record, rerun):
            b = run["before"]
            for recipe, s, _, _ in _served(run):
                right, _, lost = paired_counts(b["R@1"], s["R@1"], s["flip_rate"], run["test_queries"])
                lines.append(
                    f"| {run['seed']} | {recipe} | {_cpu(run)} | {b['R@1']:.1f} | {s['interpolation']:.2f} "
                    f"| {s['guard_margin']:.2f} | {_arrow(b['R@1'], s['R@1'])} | {lost} of {right} "
                    f"| {_every_goal(run, s)} |"
                )
    return "\n".join(lines) + "\n"


def load_replicates() -> list[dict]:
    """``bench replicates`` runs: recorded runs' served adapters on fresh draws of the test split."""
    return [json.loads(p.read_text()) for p in sorted((RESULTS / "replicates").glob("feedback-*.json"))]


#: the served recipes of a run by their key in its JSON, in the order :func:`_served` lists them
SERVED_KEYS = ("tuned_on_held_out", "tuned_then_refit", "tuned_by_folds")


def _replicated_run(runs: list[dict], rep: dict) -> dict:
    """The recorded run a replicates file judged again, found by its final adapter's fingerprint
    (another CPU or setting trains other weights) and its settings: runs that differ only in
    their soups share the one-adapter learning curve, and so the final curve adapter."""
    run = next(
        (r for r in runs if final_adapter(r)["fingerprint"] == rep["run_fingerprint"] and _same_recipe(r, rep)),
        None,
    )
    if run is None:
        raise SystemExit(f"replicates of seed {rep['seed']} have no recorded run with their final adapter and settings")
    return run


def _served_by_key(run: dict) -> dict[str, tuple[str, dict, dict | None, dict | None]]:
    """:func:`_served` by each served recipe's key in the run's JSON."""
    return dict(zip([k for k in SERVED_KEYS if run.get(k)], _served(run), strict=True))


def feedback_frontier_table(runs: list[dict], replicates: list[dict]) -> str:
    """An adapter weighed at every serving pair on the pooled replicates (``--frontier``): per
    interpolation, the best guard margin within the flip goal, the largest gain at any margin,
    and the fewest flips that reach the R@1 goal."""
    fronts = [r for r in replicates if r.get("frontier")]
    if not fronts:
        return "No `bench replicates --frontier` run is recorded yet.\n"
    lines = [
        "| seed | adapter | queries | interpolation | best within 5 % flips "
        "| largest R@1 gain | +8 R@1 at the fewest flips |",
        "|---:|---|---:|---:|---|---|---|",
    ]

    def cell(g: dict | None) -> str:
        if g is None:
            return "none"
        flips = f"{g['flips']} of {g['right_before']} ({100 * g['flip_rate']:.1f} %)"
        return f"margin {g['guard_margin']:.2f}: {g['R@1_gain']:+.1f} R@1, {flips} flips"

    for rep in sorted(fronts, key=_by_recipe):
        front = rep["frontier"]
        recipe = _served_by_key(_replicated_run(runs, rep))[front["recipe"]][0]
        for a in sorted({g["interpolation"] for g in front["grid"]}):
            pairs = [g for g in front["grid"] if g["interpolation"] == a and g["flip_rate"] is not None]
            within = [g for g in pairs if g["flip_rate"] <= MAX_TEST_FLIP_RATE]
            best = max(within, key=lambda g: g["R@1"], default=None)
            largest = max(pairs, key=lambda g: g["R@1"], default=None)
            reach = min((g for g in pairs if g["R@1_gain"] >= MIN_R1_GAIN), key=lambda g: g["flips"], default=None)
            lines.append(
                f"| {rep['seed']} | {recipe} | {rep['queries']:,} | {a:.2f} | {cell(best)} "
                f"| {cell(largest)} | {cell(reach)} |"
            )
    return "\n".join(lines) + "\n"


def _pooled_served(rep: dict, key: str, served: dict) -> dict:
    """The replicates' pooled numbers of a served recipe, checked to be served at the run's pair."""
    p = rep["pooled"][key]
    if (p["interpolation"], p["guard_margin"]) != (served["interpolation"], served["guard_margin"]):
        raise SystemExit(f"replicates of seed {rep['seed']} served {key} at another pair than the run")
    return p


def _pooled_verdict(rep: dict, p: dict) -> str:
    """Every goal on the pooled replicates, and how many replicates meet them alone."""
    met = f"{p['replicates_meeting_every_goal']} of {rep['replicates']} replicates"
    return f"{'**met**' if p['every_goal'] else 'missed'} ({met})"


def feedback_replicates_table(runs: list[dict], replicates: list[dict], keys: tuple[str, ...] = SERVED_KEYS) -> str:
    """Each served recipe of a run (of ``keys``) on its own test split and pooled over the
    replicates: the R@1 gain and the flips with their 95 % intervals, the known-phrasings change,
    every goal."""
    if not replicates:
        return "No `bench replicates` run is recorded yet.\n"
    lines = [
        "| seed | recipe | on | queries | R@1 gain (95 % interval) | flips (95 % interval) "
        "| known-phrasings R@10 | every goal |",
        "|---:|---|---|---:|---|---|---:|---|",
    ]
    for rep in sorted(replicates, key=_by_recipe):
        run = _replicated_run(runs, rep)
        pooled = rep["pooled"]
        # a soup run's pair tuned on the held-out fifth serves its one-adapter curve, which the run
        # without soups shares: where that run is in the table, its row already shows the adapter
        one_shown = rep["settings"].get("soup", 1) > 1 and any(
            _same_recipe(r, _with_settings(rep, soup=1)) for r in replicates
        )
        for key, (recipe, served, _, _) in _served_by_key(run).items():
            if key not in keys or (key == "tuned_on_held_out" and one_shown):
                continue
            v = verdict_intervals(run["before"], served, run["test_queries"])
            known = served["known_phrasings_R@10"] - run["known_phrasings"]["before"]["R@10"]
            rows = [("the test split", run["test_queries"], v, known, _every_goal(run, served))]
            p = _pooled_served(rep, key, served)
            rows.append(
                (
                    f"{rep['replicates']} replicates, pooled",
                    rep["queries"],
                    p["intervals"],
                    p["known_phrasings_R@10"] - pooled["known_phrasings_before"]["R@10"],
                    _pooled_verdict(rep, p),
                )
            )
            for on, n, iv, dk, verdict in rows:
                g, f = iv["r1_gain"], iv["flip_rate"]
                lines.append(
                    f"| {rep['seed']} | {recipe} | {on} | {n:,} | {_gain_cell(g)} | {_flips_cell(f)} "
                    f"| {dk:+.1f} | {verdict} |"
                )
    return "\n".join(lines) + "\n"


def _is_recipe_to_deploy(run: dict) -> bool:
    settings = run["settings"]
    return all(settings.get(k) == v for k, v in RECIPE_TO_DEPLOY.items()) and not settings.get("query_head")


def feedback_deploy_table(runs: list[dict], replicates: list[dict]) -> str:
    """The recipe to deploy, seed by seed, as ``isacir adapt --tune --folds`` serves it: the pair its
    pooled folds chose and what they counted, then every goal on the run's test split and on the
    fresh queries of its replicates, and the moonshot (test R@1 against the oracle's)."""
    reps = sorted((r for r in replicates if _is_recipe_to_deploy(r)), key=_by_recipe)
    if not reps:
        return f"No run of `{recipe_flags()}` is recorded with its replicates yet.\n"
    lines = [
        "| seed | pair the folds chose | pooled folds: hit@1, flips | test split: R@1 gain, flips: every goal "
        "| fresh queries | R@1 gain (95 % interval) | R@10 gain | flips (95 % interval) "
        "| known-phrasings R@10 | every goal | moonshot: test R@1, oracle's |",
        "|---:|---|---|---|---:|---|---:|---|---:|---|---|",
    ]
    for rep in reps:
        run = _replicated_run(runs, rep)
        served, pooled = run["tuned_by_folds"], rep["pooled"]
        p = _pooled_served(rep, "tuned_by_folds", served)
        held, held_before = served["held_out"], served["held_out_before"]
        top1 = round(held_before["hit@1"] * held_before["n"])
        split = verdict_intervals(run["before"], served, run["test_queries"])
        sf = split["flip_rate"]
        oracle = run["oracle_reference_caption_plus_modifier"]["R@1"]
        moon = "held" if served["R@1"] >= oracle else "not held"
        known = p["known_phrasings_R@10"] - pooled["known_phrasings_before"]["R@10"]
        lines.append(
            f"| {rep['seed']} | {served['interpolation']:.2f} / {served['guard_margin']:.2f} "
            f"| {held_before['hit@1']:.3f} → {held['hit@1']:.3f}, {held['flips']} of {top1} "
            f"| {split['r1_gain']['points']:+.1f}, {sf['flips']} of {sf['of']} ({100 * sf['rate']:.1f} %): "
            f"{_every_goal(run, served)} "
            f"| {rep['queries']:,} | {_gain_cell(p['intervals']['r1_gain'])} "
            f"| {p['R@10'] - pooled['before']['R@10']:+.1f} | {_flips_cell(p['intervals']['flip_rate'])} "
            f"| {known:+.1f} | {_pooled_verdict(rep, p)} | {moon}: {served['R@1']:.1f}, {oracle:.1f} |"
        )
    return "\n".join(lines) + "\n"


def feedback_recipes_table(runs: list[dict]) -> str:
    """Adapter recipes on the same pilot: held-out feedback (what chooses a recipe) and the test."""
    if not runs:
        return "No `bench feedback` run is recorded yet.\n"
    lines = [
        "| seed | recipe | held-out hit@1 | held-out hit@10 | test R@1 | test R@10 | flip rate |",
        "|---:|---|---|---|---|---|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["seed"], r["settings"].get("lora_rank", 0))):
        held = final_adapter(r)["holdout"]
        hb, ha = held["before"], held["after"]
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['seed']} | {_recipe(r)} "
            f"| {hb['hit@1']:.3f} → {ha['hit@1']:.3f} | {hb['hit@10']:.3f} → {ha['hit@10']:.3f} "
            f"| {_arrow(b['R@1'], a['R@1'])} | {_arrow(b['R@10'], a['R@10'])} | {100 * r['flip_rate']:.1f} % |"
        )
    return "\n".join(lines) + "\n"
