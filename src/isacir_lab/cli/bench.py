"""``isacir-lab bench``: the Shapes-CIR benches, each printing its JSON summary as the last line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from isacir.cli._app import emit_json, err
from isacir.errors import IsacirError

from ..shapes.operators import OperatorConfig
from ..shapes.world import LOW_RESOURCE_JAPANESE_FRACTION
from ._app import bench_app


@bench_app.command("shapes")
def bench_shapes_cmd(
    seed: int = typer.Option(0, help="World, foundation and training seed."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="Cache and results folder (reused across runs)."),
    small: bool = typer.Option(False, help="The scaled-down configuration the tests use."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated subset of methods (default: all)."),
    config: Optional[str] = typer.Option(
        None,
        "--config",
        help="Training settings of the trained methods: a preset "
        "or JSON file (default: shapes-cir, scaled down with --small).",
    ),
    override: list[str] = typer.Option(
        [],
        "--override",
        help="KEY=VALUE on the training settings (repeatable), "
        "e.g. max_steps=2500, output_stride=null, learn_temperature=true.",
    ),
    foundation_steps: Optional[int] = typer.Option(None, help="Training steps of the tiny foundation."),
    language: str = typer.Option(
        "en",
        help="Modifiers' language: en (the English world), or ja or both (a bilingual world whose "
        "foundation read half its captions in Japanese; every method reported per language).",
    ),
    japanese_fraction: Optional[float] = typer.Option(
        None, help="Share of the foundation's captions in Japanese (default: 0 for en, 0.5 for ja and both)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Shapes-CIR end to end: generate, train the tiny foundation and each method, evaluate all.

    The last stdout line is {"seed", "methods": {method: {R@1, R@5, R@10, R@50, mAP@10}}}; with
    --language ja or both it is {"seed", "languages": {lang: {"methods": ...}}, "language_goals"}.
    A Markdown table and a bar chart land in OUT.
    """
    from isacir.training.config import load_config
    from isacir.training.trainer import check_settings

    from ..shapes.bench import ShapesBenchConfig, run_shapes_bench

    languages = {"en": ("en",), "ja": ("ja",), "both": ("en", "ja")}.get(language)
    if languages is None:
        raise IsacirError(f"--language must be en, ja or both, not {language!r}")
    cfg = ShapesBenchConfig.small(seed) if small else ShapesBenchConfig(seed=seed)
    if japanese_fraction is not None:
        cfg = replace(cfg, world=_world_share(cfg.world, japanese_fraction))
    cfg = replace(cfg, languages=languages)
    cfg.train = (load_config(config) if config else cfg.train).with_overrides(override)
    check_settings(cfg.train)
    if foundation_steps is not None:
        cfg.foundation_steps = foundation_steps
    if methods:
        try:
            cfg = replace(cfg, methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
        except ValueError as exc:
            raise IsacirError(str(exc)) from None
    summary = run_shapes_bench(out_dir, cfg, log=lambda m: err.print(escape(str(m)), highlight=False))
    if not as_json:
        err.print((out_dir / f"{cfg.stem}.md").read_text())
        err.print(f"table, chart and details: {out_dir}/{cfg.stem}.{{md,png,json}}")
    emit_json(summary)


def _world_share(world, share: float):
    """``world`` with ``share`` of its foundation's captions in Japanese, checked."""
    try:
        return replace(world, japanese_fraction=share)
    except ValueError as exc:
        raise IsacirError(f"--japanese-fraction: {exc}") from None


@bench_app.command("feedback")
def bench_feedback_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    queries: int = typer.Option(1000, help="Pilot queries."),
    k: int = typer.Option(10, help="Candidates the operators are shown."),
    operators: str = typer.Option(
        "realistic", help="realistic: simulated people (see the options below); oracle: reads the ground truth."
    ),
    operator_count: int = typer.Option(OperatorConfig.count, help="Realistic operators, each with their own habits."),
    habit: float = typer.Option(OperatorConfig.habit, help="Share of an operator's wordings in their favourite."),
    unjudged: float = typer.Option(OperatorConfig.unjudged, help="Share of queries nobody judges."),
    wrong_confirm: float = typer.Option(
        OperatorConfig.wrong_confirm, help="Chance of confirming a near miss shown above the target."
    ),
    wrong_reject: float = typer.Option(OperatorConfig.wrong_reject, help="Chance of overlooking a shown target."),
    search_again: bool = typer.Option(
        True, "--search-again/--no-search-again", help="On a miss, search once more in other words."
    ),
    operator_seed: Optional[int] = typer.Option(None, help="The operators' random stream (default: --seed)."),
    recipe: str = typer.Option("auto", help="isacir adapt's --recipe: auto (its default), vocab, lora-attn, custom."),
    folds: Optional[int] = typer.Option(None, help="isacir adapt's --folds (default: its own)."),
    steps: Optional[int] = typer.Option(None, help="Adapter training steps (default: isacir adapt's)."),
    adapt_seed: Optional[int] = typer.Option(
        None, help="The adapters' training seed (default: --seed); another one names its results apart."
    ),
    eval_blocks: int = typer.Option(4, help="Blocks of the evaluation stream, each as large as the test split."),
    novel_objects: bool = typer.Option(
        False, "--novel-objects", help="Draw the evaluation stream without any object set the pilot showed."
    ),
    curve: str = typer.Option("", help="Also adapters on the first N logged queries, e.g. 100,300 (off by default)."),
    language: str = typer.Option(
        "en", help="What the operators write: en, or ja (on a bilingual world; see --japanese-fraction)."
    ),
    japanese_fraction: Optional[float] = typer.Option(
        None,
        help="Share of the foundation's captions in Japanese (default: 0 for en; for ja "
        f"{LOW_RESOURCE_JAPANESE_FRACTION:g}, a foundation that barely read the operators' language).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Learning from a simulated pilot: the adapter isacir adapt serves, judged on fresh queries.

    The last stdout line is {"seed", "operators", "verdicts", "served": {"before", "after",
    "flip_rate", "flip_ci", "phrasings": {"used", "unseen"}, "per_edit", "known_phrasings"},
    "overlap", "timings"}, numbers in percent; details and goals land in
    OUT/feedback-{operators}-seed{S}.json (on a bilingual world -ja{share}-{language} is added).
    """

    from isacir.adapt import AdaptSettings

    from ..shapes.bench import ShapesBenchConfig
    from ..shapes.feedback_bench import feedback_stem, run_feedback_bench
    from ..shapes.pilot import PilotConfig

    if queries < 1:
        raise IsacirError("--queries must be at least 1")
    if language not in ("en", "ja"):
        raise IsacirError(f"--language must be en or ja, not {language!r}")
    share = (
        japanese_fraction
        if japanese_fraction is not None
        else (0.0 if language == "en" else LOW_RESOURCE_JAPANESE_FRACTION)
    )
    if language == "ja" and not share:
        raise IsacirError("--language ja needs a foundation that read some Japanese: --japanese-fraction above 0")
    world = ShapesBenchConfig(seed=seed)
    world = replace(world, world=_world_share(world.world, share))
    people = OperatorConfig.of(
        operators,
        seed=seed if operator_seed is None else operator_seed,
        count=operator_count,
        habit=habit,
        unjudged=unjudged,
        wrong_confirm=wrong_confirm,
        wrong_reject=wrong_reject,
        search_again=search_again,
    )
    settings = AdaptSettings(
        recipe=recipe,
        seed=seed if adapt_seed is None else adapt_seed,
        **({"folds": folds} if folds is not None else {}),
        **({"steps": steps} if steps else {}),
    )
    settings.check()
    try:
        points = tuple(int(n) for n in curve.split(",") if n.strip())
    except ValueError:
        raise IsacirError(f"--curve takes numbers of logged queries, e.g. 100,300; got {curve!r}") from None
    summary = run_feedback_bench(
        out_dir,
        seed,
        PilotConfig(queries=queries),
        settings,
        people,
        k,
        eval_blocks=eval_blocks,
        novel_objects=novel_objects,
        config=world,
        curve=points,
        log=lambda m: err.print(escape(str(m)), highlight=False),
        language=language,
    )
    if not as_json:
        stem = feedback_stem(seed, settings, people, share, language)
        detail = json.loads((out_dir / f"{stem}.json").read_text())
        for goal, ok in detail["goals"].items():
            err.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'missed'}[/] {goal} (served adapter)")
        err.print(f"details: {out_dir}/{stem}.json")
    emit_json(summary)


@bench_app.command("operations")
def bench_operations_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse (built where missing)."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    weeks: int = typer.Option(4, help="Weeks of the simulated pilot."),
    days_per_week: int = typer.Option(5, help="Working days per week."),
    queries_per_day: int = typer.Option(100, help="Queries the operators send each day."),
    bad_week: int = typer.Option(2, help="The week on whose first day a bad adapter is offered (0: never)."),
    min_new_verdicts: int = typer.Option(300, help="The policy: judged searches before a cycle starts."),
    canary_share: float = typer.Option(0.3, help="The policy: the share of searches interleaved with a candidate."),
    min_comparisons: int = typer.Option(60, help="The policy: judged comparisons before a decision."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Weeks of a simulated pilot with the learning loop running by its policy, and a bad adapter
    offered once. The last stdout line is {"seed", "weeks": [{"week", "version", "false_hit_rate",
    "ci", "operator_s_per_query", "queries", "judged"}], "decisions", "bad_version", "errors_5xx",
    "goals", "took_s"}; details land in OUT/operations-seed{S}.json."""
    from ..shapes.operations_bench import OperationsConfig, run_operations_bench

    ops = OperationsConfig(
        weeks=weeks,
        days_per_week=days_per_week,
        queries_per_day=queries_per_day,
        bad_week=bad_week,
        min_new_verdicts=min_new_verdicts,
        canary_share=canary_share,
        min_comparisons=min_comparisons,
    )
    summary = run_operations_bench(out_dir, seed, ops, log=lambda m: err.print(escape(str(m)), highlight=False))
    if not as_json:
        for goal, ok in summary["goals"].items():
            err.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'missed'}[/] {goal}")
        err.print(f"details: {out_dir}/operations-seed{seed}.json")
    emit_json(summary)


@bench_app.command("phrasings")
def bench_phrasings_cmd(
    seed: int = typer.Option(0, help="The seed of the bench feedback run whose pilot log to use."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    operators: str = typer.Option("realistic", help="Which bench feedback run: realistic or oracle operators."),
    steps: Optional[int] = typer.Option(None, help="Adapter training steps (default: isacir adapt's)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Which adapter ideas carry to new phrasings, judged on the pilot's feedback by leaving each
    phrasing out in turn (never on the evaluation stream).

    The last stdout line is {"queries", "before_hit@1", and per idea "hit@1", "gain", "gain_ci"};
    details land in OUT/phrasings-seedS.json.
    """
    from ..shapes.phrasing_folds import run_phrasing_folds

    runs = sorted((out_dir / "feedback").glob(f"{operators}-seed{seed}-*"))
    runs = [r for r in runs if (r / "feedback.sqlite").is_file() and "-adapt" not in r.name]
    pilots = sorted((out_dir / "pilots").glob("*/pilot-run.json"))
    if not runs or not pilots:
        raise IsacirError(f"no bench feedback run of seed {seed} under {out_dir}: run isacir-lab bench feedback first")
    run = runs[-1]
    key = run.name.rsplit("-", 1)[-1]
    paths = next((json.loads(p.read_text()) for p in pilots if p.parent.name == key), None)
    if paths is None:
        raise IsacirError(f"the pilot of {run} ({key}) is not under {out_dir}/pilots")
    summary = run_phrasing_folds(
        run, paths, out_dir, seed, steps=steps, log=lambda m: err.print(escape(str(m)), highlight=False)
    )
    emit_json(summary)


@bench_app.command("domain")
def bench_domain_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    steps: int = typer.Option(300, help="Steps of continued distillation on the shifted world's photos."),
    replay: bool = typer.Option(False, "--replay", help="Mix the original unlabeled images into the adaptation set."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Domain adaptation from unlabeled photos: ISA before and after train --init-from on a shifted world.

    The last stdout line is {"seed", "steps", "replay", "shifted": {"before", "after"},
    "standard": {"before", "after"}}.
    """
    from ..shapes.domain_bench import run_domain_bench

    if steps < 1:
        raise IsacirError("--steps must be at least 1")
    summary = run_domain_bench(out_dir, seed, steps, replay, log=lambda m: err.print(escape(str(m)), highlight=False))
    if not as_json:
        for world in ("shifted", "standard"):
            b, a = summary[world]["before"], summary[world]["after"]
            err.print(f"{world}: R@1 {b['R@1']} -> {a['R@1']}, R@10 {b['R@10']} -> {a['R@10']}")
    emit_json(summary)


@bench_app.command("edge-int8")
def bench_edge_int8_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse (built where missing)."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    edge_out: Optional[Path] = typer.Option(
        None, "--edge-out", help="Where the gated edge folder goes (default: OUT/edge-seed{SEED})."
    ),
    max_r10_drop: float = typer.Option(1.0, help="The most R@10 points the int8 model may lose against fp32."),
    min_query_cosine: float = typer.Option(0.99, help="The export's own gate: least composed-query cosine."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """The int8 edge model's task-level gate: Shapes-CIR test R@K with fp32 and int8 ONNX tokens.

    Writes the edge folder (fp32 + int8) only when int8's R@10 is within --max-r10-drop of fp32's and
    the export's cosine gate holds. The last stdout line is {"seed", "torch", "fp32", "int8",
    "payloads", "r10_drop", "max_r10_drop", "query_cosine", "written", "edge", "refused"}.
    """
    from ..shapes.edge_bench import run_edge_bench

    if max_r10_drop < 0:
        raise typer.BadParameter("must be at least 0", param_hint="--max-r10-drop")
    summary = run_edge_bench(
        out_dir,
        seed,
        max_r10_drop=max_r10_drop,
        min_query_cosine=min_query_cosine,
        edge_out=edge_out,
        log=lambda m: err.print(escape(str(m)), highlight=False),
    )
    if not as_json:
        if summary["written"]:
            err.print(f"[green]int8 written[/] to {summary['edge']}: R@10 drop {summary['r10_drop']} points")
        else:
            err.print(f"[red]int8 refused[/]: {escape(summary['refused'])}")
    emit_json(summary)


@bench_app.command("pilot-versions")
def bench_pilot_versions_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    queries: int = typer.Option(1000, help="Pilot queries: the first half on ISA, the rest on ISA + adapter."),
    k: int = typer.Option(10, help="Candidates the simulated operator looks at."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """A two-version pilot: the ISA encoder, then ISA with the adapter learned from the first half.

    Writes the pilot report, the per-version chart and summary.json into OUT/pilot-versions-seedS/.
    """
    from ..shapes.feedback_bench import run_pilot_versions
    from ..shapes.pilot import PilotConfig

    if queries < 4:
        raise IsacirError("--queries must be at least 4")
    result = run_pilot_versions(
        out_dir, seed, PilotConfig(queries=queries), k=k, log=lambda m: err.print(escape(str(m)), highlight=False)
    )
    if not as_json:
        for g in result["versions"]:
            lo, hi = g["false_hit_rate_ci"]
            err.print(
                f"{g['key']}: false-hit rate {g['false_hit_rate']:.3f} [{lo:.3f}, {hi:.3f}], {g['queries']} queries"
            )
    emit_json(result)
