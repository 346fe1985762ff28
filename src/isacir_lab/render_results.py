"""Generate the result tables of the docs (CSV and Markdown) from the benchmark JSON in docs/results/.

    isacir-lab render           # rewrite the generated files
    isacir-lab render --check   # exit 1 if any generated file is stale

Tables are never typed by hand: a bench run writes ``results-seed{S}.json``, which is copied to
``docs/results/shapes-seed{S}.json``; this module writes ``docs/results/shapes-cir.csv``,
``docs/results/shapes-cir-summary.csv``, ``docs/results/shapes-cir.md``, and the blocks between
``<!-- generated:NAME -->`` markers in README.md and the docs pages. ``make lint`` runs the check.

It works on a checkout (the docs are not installed with the package): the one this module sits in
when installed editable, otherwise the current directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

from isacir.adapt.recipes import RECIPE_TO_DEPLOY, recipe_flags

from .shapes.feedback_goals import (
    MAX_TEST_FLIP_RATE,
    MIN_R1_GAIN,
    feedback_goals,
    final_adapter,
    goals_met,
    paired_counts,
    verdict_intervals,
)


def _checkout() -> Path:
    """The repository whose docs to render: this file's own checkout, else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "docs" / "results").is_dir() else Path.cwd()


ROOT = _checkout()
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@10")
ORACLES = {
    "oracle_target_caption": "oracle: the target's true caption",
    "oracle_reference_caption_plus_modifier": "oracle: the reference's true caption + modifier",
}
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def markers(name: str) -> tuple[str, str]:
    """Generated blocks inside hand-written pages sit between these two comments."""
    return f"<!-- generated:{name} (isacir-lab render) -->", f"<!-- /generated:{name} -->"


def load_seeds() -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("shapes-seed*.json"))]
    if not runs:
        raise SystemExit(f"no shapes-seed*.json in {RESULTS}")
    return sorted(runs, key=lambda r: r["seed"])


def rows_of(run: dict) -> dict[str, dict[str, float]]:
    return {**run["methods"], **{k: v for k, v in run.get("oracles", {}).items() if k in ORACLES}}


def label(name: str, bold: bool = False) -> str:
    if name in ORACLES:
        return f"*{ORACLES[name]}*"
    return f"**{name}**" if bold else name


def fmt(x: float) -> str:
    return f"{x:.1f}"


def per_seed_csv(runs: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seed", "row", *METRICS, "source"])
    for run in runs:
        for name, m in rows_of(run).items():
            w.writerow([run["seed"], name, *(fmt(m[k]) for k in METRICS), run.get("source", "isacir-lab bench shapes")])
    return buf.getvalue()


def summary(runs: list[dict]) -> dict[str, dict]:
    """Mean, min and max of every metric over the seeds that have the row."""
    names: list[str] = []
    for run in runs:
        names += [n for n in rows_of(run) if n not in names]
    out = {}
    for name in names:
        have = [rows_of(r)[name] for r in runs if name in rows_of(r)]
        out[name] = {
            "seeds": len(have),
            **{
                k: (statistics.mean(h[k] for h in have), min(h[k] for h in have), max(h[k] for h in have))
                for k in METRICS
            },
        }
    return out


def summary_csv(runs: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "seeds", *(f"{k} {s}" for k in METRICS for s in ("mean", "min", "max"))])
    for name, s in summary(runs).items():
        w.writerow([name, s["seeds"], *(fmt(v) for k in METRICS for v in s[k])])
    return buf.getvalue()


def summary_table(runs: list[dict]) -> str:
    seeds = [r["seed"] for r in runs]
    lines = [
        f"Mean over seeds {seeds[0]} to {seeds[-1]} (lowest–highest in brackets); gallery 3,869, 500 queries "
        "per seed, the reference excluded:",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, s in summary(runs).items():
        if s["seeds"] == 1:
            cells = [fmt(s[k][0]) for k in METRICS]
        else:
            cells = [f"{fmt(s[k][0])} ({fmt(s[k][1])}–{fmt(s[k][2])})" for k in METRICS]
        have = [r["seed"] for r in runs if name in rows_of(r)]
        note = (
            "" if len(have) == len(runs) else f" (seed{'s' if len(have) > 1 else ''} {', '.join(map(str, have))} only)"
        )
        lines.append(f"| {label(name, name == 'isa')}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


GOALS = (
    (
        "R@10 >= pic2word's and isa_symmetric's",
        lambda m: (
            m["isa"]["R@10"],
            max(m["pic2word"]["R@10"], m["isa_symmetric"]["R@10"]),
            f"{fmt(m['pic2word']['R@10'])} / {fmt(m['isa_symmetric']['R@10'])}",
            "R@10",
        ),
    ),
    (
        "R@1 >= 2 x image_only",
        lambda m: (m["isa"]["R@1"], 2 * m["image_only"]["R@1"], fmt(2 * m["image_only"]["R@1"]), "R@1"),
    ),
    (
        "R@1 >= 1.5 x image_plus_text",
        lambda m: (m["isa"]["R@1"], 1.5 * m["image_plus_text"]["R@1"], fmt(1.5 * m["image_plus_text"]["R@1"]), "R@1"),
    ),
    ("R@1 >= pixel_only", lambda m: (m["isa"]["R@1"], m["pixel_only"]["R@1"], fmt(m["pixel_only"]["R@1"]), "R@1")),
)


def goals_table(runs: list[dict]) -> str:
    lines = ["| goal for isa | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for text, fn in GOALS:
        cells = []
        for r in runs:
            have, need, shown, _ = fn(r["methods"])
            cells.append(f"{fmt(have)} vs {shown}: {'met' if have >= need - 1e-9 else '**missed**'}")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_seed_tables(runs: list[dict]) -> str:
    parts = []
    for r in runs:
        parts.append(
            f"### Seed {r['seed']}\n\n`isacir-lab bench shapes --seed {r['seed']}`"
            + (f" ({r['source']})" if r.get("source") else "")
            + ".\n\n"
        )
        parts.append("| method | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS) + "\n")
        for name, m in rows_of(r).items():
            b = name == "isa"
            cells = [f"**{fmt(m[k])}**" if b else fmt(m[k]) for k in METRICS]
            parts.append(f"| {label(name, b)} | " + " | ".join(cells) + " |\n")
        parts.append("\n")
    return "".join(parts)


def results_page(runs: list[dict]) -> str:
    return f"""<!-- generated by isacir-lab render from docs/results/shapes-seed*.json; do not edit -->
# Shapes-CIR results

The quality of every method on [Shapes-CIR](../evaluation.md#shapes-cir-offline-quality), trained
with the `shapes-cir` preset. How the recipe came about, and every screen and ablation behind it, is
in [the experiment history](../experiments/shapes-cir.md). The same numbers as CSV:
[per seed](shapes-cir.csv), [summary](shapes-cir-summary.csv).

## Summary

{summary_table(runs)}
## The goals for ISA

{goals_table(runs)}
## Per seed

{per_seed_tables(runs)}"""


def _backbone_cells(result: dict) -> tuple[list[str], dict]:
    """The runtimes a backbones run measured, and each one's large-encoder milliseconds.

    Runs from before ``--runtime`` hold PyTorch only, at the top level."""
    large = result.get("runtimes") or {
        "torch": {k: result[k] for k in ("large_ms", "large_ms_before", "large_ms_after")}
    }
    return list(large), large


def backbones_table(result: dict) -> str:
    runtimes, large = _backbone_cells(result)
    note = f"; {result['source']}" if result.get("source") else ""
    cpu = result.get("cpu")
    where = f" on {cpu['model']} ({', '.join(cpu['vector_extensions'])})" if cpu else ""
    timing = "; ".join(
        f"{rt} {v['large_ms_before']:.0f} ms before and {v['large_ms_after']:.0f} ms after" for rt, v in large.items()
    )
    lines = [
        f"{result['foundation']} image encoder, {result['threads']} thread(s){where}: {timing} the light ones{note}.",
        "",
        "| backbone | input px | params (M, with token learner) | "
        + " | ".join(f"{rt} light ms | {rt} speedup" for rt in runtimes)
        + " |",
        "|---|---:|---:|" + "---:|---:|" * len(runtimes),
    ]
    errors = []
    for r in result["backbones"]:
        cells = r.get("runtimes") or {"torch": r}
        row = []
        for rt in runtimes:
            if "error" in cells[rt]:
                errors.append(f"- {r['backbone']} in {rt}: `{cells[rt]['error']}`")
                row.append(f"failed ({len(errors)}) | –")
            else:
                row.append(f"{cells[rt]['light_ms']:.1f} | **{large[rt]['large_ms'] / cells[rt]['light_ms']:.0f}x**")
        lines.append(f"| {r['backbone']} | {r['input_px']} | {r['params_m']:.2f} | {' | '.join(row)} |")
    if errors:
        lines += ["", "Failed cells:", "", *[f"{i}. {e[2:]}" for i, e in enumerate(errors, 1)]]
    return "\n".join(lines) + "\n"


def backbones_csv(result: dict) -> str:
    runtimes, large = _backbone_cells(result)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["backbone", "input_px", "params_m", "runtime", "light_ms", "large_ms", "speedup"])
    for r in result["backbones"]:
        cells = r.get("runtimes") or {"torch": r}
        for rt in runtimes:
            if "error" in cells[rt]:
                w.writerow([r["backbone"], r["input_px"], r["params_m"], rt, "", large[rt]["large_ms"], ""])
                continue
            ms, big = cells[rt]["light_ms"], large[rt]["large_ms"]
            w.writerow([r["backbone"], r["input_px"], r["params_m"], rt, ms, big, f"{big / ms:.1f}"])
    return buf.getvalue()


def pilot_definitions() -> str:
    """The pilot's definitions as the code states them (so the docs cannot drift from the code)."""
    from isacir.pilot.metrics import DEFINITIONS

    return "| name | definition |\n|---|---|\n" + "".join(f"| `{k}` | {v} |\n" for k, v in DEFINITIONS.items())


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


def _arrow(before: float, after: float) -> str:
    return f"{before:.1f} → {after:.1f} ({after - before:+.1f})"


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


def domain_table(runs: list[dict]) -> str:
    """`bench domain` per seed: the shifted world's test (the customer's) and the standard one."""
    if not runs:
        return "No `bench domain` run is recorded yet.\n"
    lines = [
        "| seed | adaptation set | steps | shifted R@1 | shifted R@10 | standard R@1 | standard R@10 |",
        "|---:|---|---:|---|---|---|---|",
    ]
    for r in runs:
        images = "customer's + original photos" if r.get("replay") else "customer's photos"
        sb, sa, tb, ta = r["shifted"]["before"], r["shifted"]["after"], r["standard"]["before"], r["standard"]["after"]
        lines.append(
            f"| {r['seed']} | {images} | {r['steps']} "
            f"| {_arrow(sb['R@1'], sa['R@1'])} | {_arrow(sb['R@10'], sa['R@10'])} "
            f"| {_arrow(tb['R@1'], ta['R@1'])} | {_arrow(tb['R@10'], ta['R@10'])} |"
        )
    return "\n".join(lines) + "\n"


def pilot_versions_table(runs: list[dict]) -> str:
    """`bench pilot-versions`: the pilot's rates per served version, with Wilson 95 % intervals."""
    if not runs:
        return "No `bench pilot-versions` run is recorded yet.\n"
    lines = [
        "| seed | version | queries | false-hit rate [95 %] | precision@1 [95 %] | hit@K |",
        "|---:|---|---:|---|---|---:|",
    ]
    for r in runs:
        for g in r["versions"]:
            fh, p1 = g["false_hit_rate_ci"], g["precision_at_1_ci"]
            lines.append(
                f"| {r['seed']} | `{g['key']}` | {g['queries']} | {g['false_hit_rate']:.3f} [{fh[0]:.3f}, {fh[1]:.3f}] "
                f"| {g['precision_at_1']:.3f} [{p1[0]:.3f}, {p1[1]:.3f}] | {g['hit_at_k']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def load_test_table(runs: list[tuple[str, dict]]) -> str:
    """`benchmarks/load_test.py --compare-to REV`: before and after, side by side from one run each."""
    if not runs:
        return "No load-test run is recorded yet.\n"
    lines = [
        "| foundation | server | requests/s | p50 ms | p99 ms | p99 / p50 | log commits per query | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs:
        b = r["before"]
        names = {1: "1 torch thread", None: "torch's threads"}
        threads = names.get(b["torch_threads"], f"{b['torch_threads']} threads")
        for who, x, commits in (
            (f"before (`{b['revision']}`, {threads})", b, "1 (one per query)"),
            ("after (defaults)", r, f"{r['log_commits_per_query']:.3f}"),
        ):
            lines.append(
                f"| {name} | {who} | {x['rps']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
                f"{x['p99_ms'] / x['p50_ms']:.2f} | {commits} | {x['errors']} |"
            )
        lines.append(f"| {name} | **after / before** | **{r['rps_ratio']:.2f}x** | | | | | |")
    return "\n".join(lines) + "\n"


def soak_table(run: dict | None) -> str:
    """`benchmarks/soak.py`: requests per workload, server errors and resident memory."""
    if run is None:
        return "No soak run is recorded yet.\n"
    lines = ["| workload | rate /s | requests | statuses |", "|---|---:|---:|---|"]
    for name, rate in run["rates_per_s"].items():
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(run["status"][name].items()))
        lines.append(f"| {name} | {rate:g} | {run['requests'][name]} | {codes} |")
    lines.append("")
    lines.append(
        f"{run['duration_s']:.0f} s on {run['cpu_count']} cores: **{run['server_errors']} server errors**, "
        f"{run['transport_errors']} transport errors; resident memory {run['rss_warm_mb']:.0f} MB after warm-up, "
        f"{run['rss_end_mb']:.0f} MB at the end (**{100 * run['rss_growth']:+.1f} %**, goal at most +10 %)."
    )
    return "\n".join(lines) + "\n"


def ann_table(runs: list[tuple[str, dict]]) -> str:
    """`isacir bench search --index all`: every index family on the same data, against exact search."""
    if not runs:
        return "No ANN run is recorded yet.\n"
    lines = [
        "| data, queries | index | nprobe | build s | p50 ms | p99 ms | recall@10 "
        "| re-ranked top 100: recall@10, p50 ms | GiB per 1M vectors |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, run in runs:
        for r in run["indexes"].values():
            idx = r["index"]
            rerank = (
                f"{r['recall_at_10_rerank']:.3f}, {r['rerank_p50_ms']:.2f}" if "recall_at_10_rerank" in r else "(exact)"
            )
            lines.append(
                f"| {name} | {idx['type']} | {idx.get('nprobe', '-')} | {r['build_s']:.0f} | {r['ann_p50_ms']:.2f} | "
                f"{r['ann_p99_ms']:.2f} | {r['recall_at_10']:.3f} | {rerank} | {r['gib_per_million']:.3f} |"
            )
    first = runs[0][1]
    lines.append("")
    lines.append(
        f"{first['n']:,} x {first['dim']} vectors; {first['queries']} single queries for the first data set, "
        f"{runs[-1][1]['queries']} for the others; exact search p50 {first['exact_p50_ms']:.0f} ms. Memory is the "
        "serialized index (codes, ids, lists and the id map)."
    )
    cal = next((r["calibration"] for _, r in runs if "calibration" in r), None)
    if cal:
        lines.append(
            f"Calibrated on `{cal['gallery']}` ({cal['source_n']:,} vectors, {cal['source_dim']}-d): "
            f"{cal['clusters']} k-means clusters, median cosine to the centre {cal['cos_to_centre_median']:.2f}, "
            f"mean cosine between centres {cal['centre_pairwise_cos']:.3f}."
        )
    return "\n".join(lines) + "\n"


def shapes_ann_table(run: dict | None) -> str:
    """`benchmarks/shapes_ann.py`: IVF families on the Shapes-CIR gallery with its real composed queries."""
    if run is None:
        return "No Shapes-CIR ANN run is recorded yet.\n"
    lines = [
        "| index | nprobe tuned on | nprobe | recall@10 | after exact re-ranking | task R@10 | p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, fam in run["families"].items():
        for tuned_on, r in fam["tuned_on"].items():
            rr = f"{r['recall_at_10_reranked']:.3f}" if r["recall_at_10_reranked"] is not None else "-"
            lines.append(
                f"| {kind} ({fam['nlist']} lists) | {tuned_on} | {r['nprobe']} | {r['recall_at_10']:.3f} | {rr} | "
                f"{r['task_r10']:.1f} | {r['p50_ms']:.3f} |"
            )
    lines.append("")
    lines.append(
        f"{run['gallery']:,} gallery images ({run['dim']}-d), {run['queries_measured']} held-out composed queries "
        f"(tuned on {run['queries_tuned_on']} others); exact search's task R@10 is {run['exact_task_r10']:.1f}."
    )
    return "\n".join(lines) + "\n"


def ingest_table(runs: list[dict]) -> str:
    """`benchmarks/ingest_under_load.py --compare-to REV`: search latency idle and during a 20k add."""
    if not runs:
        return "No ingest run is recorded yet.\n"
    lines = [
        "| writer | gallery | code | idle p50 / p99 ms | during p50 / p99 / max ms | p99 during / idle | add time |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for r in runs:
        where = f"{r['base'] // 1000}k + {r['added'] // 1000}k"
        writer = "another process (nice 10)" if r["writer"] == "process" else "a thread of the service"
        for who, x in ((f"before (`{r['before']['revision']}`)", r["before"]), ("after", r)):
            lines.append(
                f"| {writer} | {where} | {who} | {x['idle']['p50_ms']:.2f} / {x['idle']['p99_ms']:.2f} | "
                f"{x['during']['p50_ms']:.2f} / {x['during']['p99_ms']:.2f} / {x['during']['max_ms']:.0f} | "
                f"**{x['p99_ratio']:.2f}x** | "
                f"{x['add_s']:.0f} s |"
            )
    return "\n".join(lines) + "\n"


def runtimes_table(runs: list[dict], browser: list[dict]) -> str:
    """`isacir bench query-side --runtime all` per backbone and CPU, and `benchmarks/browser_encode.py`."""
    if not runs:
        return "No per-runtime run is recorded yet.\n"
    lines = [
        f"{runs[0]['threads']} thread; foundation `{runs[0]['foundation']}`, {runs[0]['tokens']} tokens; "
        f"PyTorch {runs[0]['torch']}.",
        "",
        "| CPU (vector extensions) | ONNX Runtime | backbone | runtime | light ms | large ms | speedup |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in runs:
        cpu = f"{r['cpu']['model']} ({', '.join(r['cpu']['vector_extensions']) or 'none listed'})"
        for name, row in r["runtimes"].items():
            lines.append(
                f"| {cpu} | {r['onnxruntime']} | {r['backbone']} | {name} | {row['light_ms']:.1f} | "
                f"{row['large_ms']:.0f} | **{row['speedup']:.0f}x** |"
            )
    forms = runs[0]["payloads"]
    lines += [
        "",
        f"Payload forms ({runs[0]['backbone']}; the cosine is the composed query's to the fp32 one, the least over "
        f"four modifiers; a {runs[0]['jpeg_bytes']:,}-byte JPEG of the same photo for scale):",
        "",
        "| payload | bytes | of the JPEG | query cosine |",
        "|---|---:|---:|---:|",
    ]
    for name, form in forms.items():
        lines.append(
            f"| {name} | {form['bytes']:,} | {form['bytes'] / runs[0]['jpeg_bytes']:.2f} | {form['cosine']:.4f} |"
        )
    if browser:
        lines += [
            "",
            "In the browser (headless Chromium, ONNX Runtime Web WASM, 1 thread):",
            "",
            "| CPU | backbone | input px | preprocess ms | encode ms | Python ONNX Runtime ms | WASM / native |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for b in browser:
            lines.append(
                f"| {b['cpu']['model']} | {b['backbone']} | {b['input_px']} | {b['preprocess_ms']:.1f} | "
                f"{b['encode_ms']:.1f} | {b['python_onnx_ms']:.1f} | {b['wasm_over_native']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def edge_int8_table(runs: list[dict]) -> str:
    """`isacir-lab bench edge-int8`: Shapes-CIR test R@K with PyTorch, ONNX fp32 and ONNX int8 tokens."""
    if not runs:
        return "No edge-int8 run is recorded yet.\n"
    lines = [
        "| seed | tokens from | " + " | ".join(METRICS) + " |",
        "|---:|---|" + "---:|" * len(METRICS),
    ]
    for r in runs:
        rows = [("PyTorch", r["torch"]), ("ONNX fp32", r["fp32"]), ("ONNX int8", r["int8"])]
        rows += [(f"ONNX int8, {d} payload", m) for d, m in r["payloads"].items()]
        for name, m in rows:
            lines.append(f"| {r['seed']} | {name} | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |")
    lines.append("")
    for r in runs:
        verdict = "written" if r["written"] else f"refused ({r['refused']})"
        c = r["query_cosine"]
        lines.append(
            f"- seed {r['seed']} ({r['backbone']}): int8's R@10 is {r['r10_drop']:.2f} points below fp32's "
            f"(allowed {r['max_r10_drop']}); least composed-query cosine {c['min']:.4f} (required {c['required']}); "
            f"model {r['model_bytes']['int8']:,} bytes against {r['model_bytes']['fp32']:,}: int8 model {verdict}."
        )
    return "\n".join(lines) + "\n"


def fill(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of every generated block a page holds."""
    for name, body in blocks.items():
        start_mark, end_mark = markers(name)
        start, end = text.find(start_mark), text.find(end_mark)
        if start >= 0 and end > start:
            text = text[:start] + f"{start_mark}\n{body}{end_mark}" + text[end + len(end_mark) :]
    return text


def render() -> dict[Path, str]:
    runs = load_seeds()
    feedback_runs = load_feedback_runs()
    lora_runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("feedback-lora*-seed*.json"))]
    backbones = json.loads((RESULTS / "query-side-backbones.json").read_text())
    # every recorded run a replicates file may have judged again
    replicated = feedback_runs + lora_runs + load_reruns() + load_training_seeds()
    variant_runs, variant_replicates = load_variants()
    beside = _beside_their_base(variant_replicates, load_replicates())
    blocks = {
        "shapes-summary": summary_table(runs),
        "query-side-backbones": backbones_table(backbones),
        "pilot-definitions": pilot_definitions(),
        "feedback-summary": feedback_table(feedback_runs),
        "feedback-tradeoff": feedback_tradeoff_table(feedback_runs),
        "feedback-guard": feedback_guard_table(feedback_runs),
        "feedback-recipes": feedback_recipes_table(feedback_runs + lora_runs),
        "feedback-tuned": feedback_tuned_table(feedback_runs + lora_runs),
        "feedback-intervals": feedback_intervals_table(feedback_runs + lora_runs),
        "feedback-reruns": feedback_reruns_table(feedback_runs + lora_runs, load_reruns()),
        "feedback-replicates-all": feedback_replicates_table(replicated, load_replicates()),
        "feedback-frontier": feedback_frontier_table(replicated, load_replicates()),
        "feedback-variant-replicates": feedback_replicates_table(replicated + variant_runs, beside),
        "feedback-variant-frontier": feedback_frontier_table(replicated + variant_runs, beside),
        # the product page: the 5-fold recipe with each addition that helped, seed by seed
        "feedback-recipe-additions": feedback_replicates_table(
            replicated + variant_runs,
            sorted((r for r in beside if not r["settings"].get("query_head")), key=_by_recipe),
            ("tuned_by_folds",),
        ),
        "feedback-recipe-to-deploy": feedback_deploy_table(replicated + variant_runs, beside),
        "pilot-versions": pilot_versions_table(
            sorted(
                (json.loads(p.read_text()) for p in RESULTS.glob("pilot-versions-seed*.json")), key=lambda r: r["seed"]
            )
        ),
        "load-test": load_test_table(
            [
                (name, json.loads((RESULTS / f"load-{tag}.json").read_text()))
                for name, tag in (("tiny test CLIP", "tiny"), ("ViT-B/32 (random init)", "vitb32"))
                if (RESULTS / f"load-{tag}.json").exists()
            ]
        ),
        "soak": soak_table(
            json.loads((RESULTS / "soak-600s.json").read_text()) if (RESULTS / "soak-600s.json").exists() else None
        ),
        "ann-families": ann_table(
            [
                (name, json.loads((RESULTS / f"ann-1m-{tag}.json").read_text()))
                for name, tag in (
                    ("calibrated, gap", "calibrated-gap"),
                    ("calibrated, near", "calibrated-near"),
                    ("clustered, gap", "clustered-gap"),
                    ("clustered, near", "clustered-near"),
                    ("uniform, gap", "uniform-gap"),
                    ("uniform, near", "uniform-near"),
                )
                if (RESULTS / f"ann-1m-{tag}.json").exists()
            ]
        ),
        "ann-shapes": shapes_ann_table(
            json.loads((RESULTS / "ann-shapes-seed0.json").read_text())
            if (RESULTS / "ann-shapes-seed0.json").exists()
            else None
        ),
        "ingest": ingest_table(
            [
                json.loads((RESULTS / f"ingest-{tag}.json").read_text())
                for tag in ("process", "thread", "process-rebuild")
                if (RESULTS / f"ingest-{tag}.json").exists()
            ]
        ),
        "query-side-runtimes": runtimes_table(
            sorted(
                (json.loads(p.read_text()) for p in RESULTS.glob("query-side-runtimes-*.json")),
                key=lambda r: (r["backbone"], r["cpu"]["model"]),
            ),
            sorted(
                (json.loads(p.read_text()) for p in RESULTS.glob("browser-encode-*.json")),
                key=lambda b: (b["cpu"]["model"], b["encode_ms"]),
            ),
        ),
        "edge-int8": edge_int8_table(
            sorted((json.loads(p.read_text()) for p in RESULTS.glob("edge-int8-seed*.json")), key=lambda r: r["seed"])
        ),
        "domain-summary": domain_table(
            sorted(
                (json.loads(p.read_text()) for p in RESULTS.glob("domain-seed*.json")),
                key=lambda r: (r["seed"], bool(r.get("replay"))),
            )
        ),
    }
    out = {
        RESULTS / "shapes-cir.csv": per_seed_csv(runs),
        RESULTS / "shapes-cir-summary.csv": summary_csv(runs),
        RESULTS / "shapes-cir.md": results_page(runs),
        RESULTS / "query-side-backbones.csv": backbones_csv(backbones),
    }
    for page in PAGES:
        if page not in out:
            out[page] = fill(page.read_text(), blocks)
    placed = "".join(out[p] for p in PAGES)
    for name in blocks:
        if markers(name)[0] not in placed:
            raise SystemExit(f"no page holds the markers of the generated block {name!r}")
    return out


def render_docs(check: bool = False) -> list[str]:
    """Rewrite every stale generated file, or with ``check`` only list them; returns the stale paths."""
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(ROOT)))
        if not check:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return stale


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a generated file differs from what is committed")
    args = ap.parse_args(argv)
    stale = render_docs(check=args.check)
    if stale and args.check:
        print("stale generated files (run: isacir-lab render): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
