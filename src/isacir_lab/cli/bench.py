"""``isacir-lab bench``: the Shapes-CIR benches, each printing its JSON summary as the last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from isacir.cli._app import emit_json, err
from isacir.errors import IsacirError

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
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Shapes-CIR end to end: generate, train the tiny foundation and each method, evaluate all.

    The last stdout line is {"seed", "methods": {method: {R@1, R@5, R@10, R@50, mAP@10}}}; a
    Markdown table and a bar chart land in OUT.
    """
    from dataclasses import replace

    from isacir.training.config import load_config
    from isacir.training.trainer import check_settings

    from ..shapes.bench import ShapesBenchConfig, run_shapes_bench

    cfg = ShapesBenchConfig.small(seed) if small else ShapesBenchConfig(seed=seed)
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
        err.print((out_dir / f"results-seed{seed}.md").read_text())
        err.print(f"table, chart and details: {out_dir}/results-seed{seed}.{{md,png,json}}")
    emit_json(summary)


@bench_app.command("feedback")
def bench_feedback_cmd(
    seed: int = typer.Option(0, help="The bench shapes seed whose cache to reuse."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    queries: int = typer.Option(1000, help="Pilot queries (the learning curve also stops at 100 and 300)."),
    k: int = typer.Option(10, help="Candidates the simulated operator looks at."),
    steps: Optional[int] = typer.Option(None, help="Adapter training steps (default: isacir adapt's)."),
    lora_rank: int = typer.Option(0, help="LoRA rank on the text tower (0: off, as isacir adapt's default)."),
    lora_attention: bool = typer.Option(
        False, "--lora-attention", help="Adapters with isacir adapt's --lora-attention (needs --lora-rank)."
    ),
    query_head: bool = typer.Option(False, "--query-head", help="Adapters with isacir adapt's --query-head."),
    soup: int = typer.Option(
        1,
        help="The refit and K-fold recipes' adapters as isacir adapt's --soup K: each the soup of K trained "
        "with successive seeds (K times their trainings; the learning curve trains one adapter per point).",
    ),
    refit: bool = typer.Option(
        False,
        "--refit",
        help="Also measure isacir adapt --tune --refit: the pair tuned on held-out feedback, trained on all of it.",
    ),
    folds: int = typer.Option(
        0,
        help="Also measure isacir adapt --tune --folds K: the pair chosen by K-fold cross-validation over all "
        "the pilot's feedback, trained on all of it (0: off; K + 1 more trainings).",
    ),
    adapt_seed: Optional[int] = typer.Option(
        None,
        help="The adapters' training seed (default: --seed). Another one measures training noise on the same "
        "pilot; its results get a name of their own (feedback-seedS-adaptA).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """Learning from a simulated pilot: test R@K with and without the adapter its feedback trains.

    The last stdout line is {"seed", "before", "after", "curve", "known_phrasings",
    "unseen_phrasings", "flip_rate"}; details, goals and the learning-curve plot land in OUT.
    """
    from dataclasses import replace

    from ..shapes.feedback_bench import BENCH_ADAPT, CURVE, FeedbackRun, run_feedback_bench
    from ..shapes.pilot import PilotConfig

    if queries < 1:
        raise IsacirError("--queries must be at least 1")
    adapt_seed = seed if adapt_seed is None else adapt_seed
    settings = replace(
        BENCH_ADAPT,
        seed=adapt_seed,
        lora_rank=lora_rank,
        query_head=query_head,
        lora_attention=lora_attention,
        soup=soup,
        refit=refit,
        folds=folds,
        **({"steps": steps} if steps else {}),
    )
    settings.check()
    curve = tuple(n for n in CURVE if n < queries) + (queries,)
    summary = run_feedback_bench(
        out_dir,
        seed,
        PilotConfig(queries=queries),
        settings,
        curve,
        k,
        log=lambda m: err.print(escape(str(m)), highlight=False),
    )
    if not as_json:
        stem = FeedbackRun.of(seed, settings).stem
        detail = json.loads((out_dir / f"{stem}.json").read_text())
        for goal, ok in detail["goals"].items():
            err.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'missed'}[/] {goal}")
        err.print(f"details and learning curve: {out_dir}/{stem}.{{json,png}}")
    emit_json(summary)


@bench_app.command("replicates")
def bench_replicates_cmd(
    seed: int = typer.Option(0, help="The seed of the bench feedback run to judge again."),
    out_dir: Path = typer.Option(Path("runs/shapes"), "--out", help="The bench shapes cache and results folder."),
    count: int = typer.Option(4, help="Replicates of the test split, each as large as the test split itself."),
    adapt_seed: Optional[int] = typer.Option(
        None, help="The run's adapter training seed, when it was not --seed (a feedback-seedS-adaptA run)."
    ),
    frontier: Optional[str] = typer.Option(
        None,
        help="Also weigh this served recipe's adapter (tuned_on_held_out, tuned_then_refit or tuned_by_folds) at "
        "every interpolation (0.5, 0.75, 1) and guard margin (0 to 0.12) on the same queries.",
    ),
    query_head: bool = typer.Option(
        False, "--query-head", help="Judge the run made with --query-head (a feedback-seedS-head run)."
    ),
    lora_attention: bool = typer.Option(
        False, "--lora-attention", help="Judge the run made with --lora-attention (a feedback-seedS-attn run)."
    ),
    soup: int = typer.Option(1, help="Judge the run made with --soup K (a feedback-seedS-soupK run)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary on stdout."),
) -> None:
    """A bench feedback run's served adapters on fresh draws of the test split, pooled.

    Trains nothing: the adapters and their pairs are the run's. Each replicate is built as the test
    split is (queries, hard negatives, distractors, held-out phrasings) from random streams of its
    own. The last stdout line is {"seed", "replicates", "queries", "before", and per served recipe
    "R@1", "R@10", "flip_rate", "known_phrasings_R@10", "every_goal"} over the pooled queries;
    per-replicate numbers, goals and intervals land in OUT/feedback-seedS-replicates.json. With
    --frontier, the summary adds that adapter's best pair within the flip goal and its largest gain
    (the JSON holds the whole grid): whether the pair or the adapter holds the gain where it is.
    """
    from ..shapes.feedback_bench import FeedbackRun
    from ..shapes.replicates import run_replicates

    run = FeedbackRun(seed, adapt_seed, lora_attention, query_head, soup)
    summary = run_replicates(
        out_dir, run, count, log=lambda m: err.print(escape(str(m)), highlight=False), frontier=frontier
    )
    if not as_json:
        detail = json.loads((out_dir / f"{run.replicates_stem}.json").read_text())
        pooled = detail["pooled"]
        for name, served in pooled.items():
            if not isinstance(served, dict) or "goals" not in served:
                continue
            gain = served["intervals"]["r1_gain"] if served["intervals"] else None
            span = f" [{gain['interval'][0]:+.1f}, {gain['interval'][1]:+.1f}]" if gain else ""
            verdict = "[green]every goal met[/]" if served["every_goal"] else "[red]missed[/]"
            err.print(
                f"{name}: R@1 {pooled['before']['R@1']} -> {served['R@1']}{span}, flips {served['flips']} of "
                f"{served['right_before']}: {verdict} on {detail['queries']} queries; "
                f"{served['replicates_meeting_every_goal']} of {detail['replicates']} replicates meet every goal"
            )
        if "frontier" in detail:
            front = detail["frontier"]
            for label, cell in (
                ("best within the flip goal", front["best_within_flip_goal"]),
                ("largest gain", front["largest_gain"]),
            ):
                err.print(
                    f"frontier of {front['recipe']}, {label}: "
                    + (
                        f"{cell['interpolation']} / {cell['guard_margin']}: R@1 {cell['R@1_gain']:+.2f}, "
                        f"flips {cell['flips']} of {cell['right_before']}"
                        if cell
                        else "no pair"
                    )
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
