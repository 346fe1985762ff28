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
import json
import sys
from pathlib import Path

from .benches import (
    ann_table,
    backbones_csv,
    backbones_table,
    domain_table,
    edge_int8_table,
    ingest_table,
    load_test_table,
    pilot_definitions,
    pilot_versions_table,
    runtimes_table,
    shapes_ann_table,
    soak_table,
)
from .feedback import (
    _beside_their_base,
    _by_recipe,
    feedback_deploy_table,
    feedback_frontier_table,
    feedback_guard_table,
    feedback_intervals_table,
    feedback_recipes_table,
    feedback_replicates_table,
    feedback_reruns_table,
    feedback_table,
    feedback_tradeoff_table,
    feedback_tuned_table,
    load_feedback_runs,
    load_replicates,
    load_reruns,
    load_training_seeds,
    load_variants,
)
from .paths import PAGES, RESULTS, ROOT
from .records import (
    AnnRun,
    BackbonesRun,
    IngestRun,
    LoadRun,
    ShapesAnnRun,
    SoakRun,
    load_browser_runs,
    load_domain_runs,
    load_edge_int8_runs,
    load_pilot_versions_runs,
    load_runtimes_runs,
    load_shapes_runs,
)
from .served import (
    load_phrasing_runs,
    load_served_runs,
    phrasing_ideas_table,
    served_context_table,
    served_edit_table,
    served_goals_table,
    served_table,
)
from .shapes import bilingual_table, load_bilingual_runs, per_seed_csv, results_page, summary_csv, summary_table


def markers(name: str) -> tuple[str, str]:
    """Generated blocks inside hand-written pages sit between these two comments."""
    return f"<!-- generated:{name} (isacir-lab render) -->", f"<!-- /generated:{name} -->"


def fill(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of every generated block a page holds."""
    for name, body in blocks.items():
        start_mark, end_mark = markers(name)
        start, end = text.find(start_mark), text.find(end_mark)
        if start >= 0 and end > start:
            text = text[:start] + f"{start_mark}\n{body}{end_mark}" + text[end + len(end_mark) :]
    return text


def render() -> dict[Path, str]:
    runs = load_shapes_runs(RESULTS)
    feedback_runs = load_feedback_runs()
    lora_runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("feedback-lora*-seed*.json"))]
    backbones = BackbonesRun.load(RESULTS / "query-side-backbones.json")
    # every recorded run a replicates file may have judged again
    replicated = feedback_runs + lora_runs + load_reruns() + load_training_seeds()
    variant_runs, variant_replicates = load_variants()
    beside = _beside_their_base(variant_replicates, load_replicates())
    served = load_served_runs(RESULTS)
    japanese = load_served_runs(RESULTS, "japanese")
    blocks = {
        "shapes-summary": summary_table(runs),
        "shapes-bilingual": bilingual_table(load_bilingual_runs(RESULTS)),
        "feedback-served": served_table(served),
        "feedback-served-goals": served_goals_table(served),
        "feedback-served-edits": served_edit_table(served),
        "feedback-served-context": served_context_table(served),
        "japanese-served": served_table(japanese),
        "japanese-served-goals": served_goals_table(japanese),
        "japanese-served-edits": served_edit_table(japanese),
        "feedback-phrasing-ideas": phrasing_ideas_table(load_phrasing_runs(RESULTS)),
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
        "pilot-versions": pilot_versions_table(load_pilot_versions_runs(RESULTS)),
        "load-test": load_test_table(
            [
                (name, LoadRun.load(RESULTS / f"load-{tag}.json"))
                for name, tag in (("tiny test CLIP", "tiny"), ("ViT-B/32 (random init)", "vitb32"))
                if (RESULTS / f"load-{tag}.json").exists()
            ]
        ),
        "soak": soak_table(SoakRun.load(RESULTS / "soak-600s.json") if (RESULTS / "soak-600s.json").exists() else None),
        "ann-families": ann_table(
            [
                (name, AnnRun.load(RESULTS / f"ann-1m-{tag}.json"))
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
            ShapesAnnRun.load(RESULTS / "ann-shapes-seed0.json")
            if (RESULTS / "ann-shapes-seed0.json").exists()
            else None
        ),
        "ingest": ingest_table(
            [
                IngestRun.load(RESULTS / f"ingest-{tag}.json")
                for tag in ("process", "thread", "process-rebuild")
                if (RESULTS / f"ingest-{tag}.json").exists()
            ]
        ),
        "query-side-runtimes": runtimes_table(load_runtimes_runs(RESULTS), load_browser_runs(RESULTS)),
        "edge-int8": edge_int8_table(load_edge_int8_runs(RESULTS)),
        "domain-summary": domain_table(load_domain_runs(RESULTS)),
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
