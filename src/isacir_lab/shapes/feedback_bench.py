"""``isacir-lab bench feedback``: does learning from a pilot's operators improve Shapes-CIR?

Reuses a ``bench shapes`` cache (world, foundation, the ISA encoder), then:

1. prepares the pilot: its own split, its own gallery indexed by the frozen image tower, and the
   ISA encoder exported to ONNX for the device side;
2. runs the pilot: every reference photo goes through the ONNX edge runner, its payload to a real
   ``isacir serve`` app over HTTP with an API key, and simulated operators (realistic people by
   default, :mod:`.operators`) judge what the service shows them;
3. trains the adapter that ``isacir adapt`` would serve on that feedback (its default: the recipe
   and its pair chosen by folds of the feedback);
4. judges the served adapter, as served, on the evaluation stream (:mod:`.evaluation`: fresh
   queries no choice has seen), split into phrasings the operators used and never used and per
   edit type, with the known-phrasings copy for forgetting; and on the world's test split for
   reference.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isacir._fs import atomic_write_text
from isacir.adapt import AdaptSettings
from isacir.bench.machine import cpu_info
from isacir.errors import ConfigError

from .bench import METRICS, ShapesBenchConfig, cached_isa
from .evaluation import (
    EVAL_BLOCKS,
    generate_evaluation,
    judge_stream,
    overlap_report,
    pct,
    served_report,
)
from .feedback_goals import language_goals, served_goals
from .operators import OperatorConfig
from .phrasing import used_phrasings
from .pilot import (
    LEFT_OUT,
    LEFT_OUT_JA,
    PilotConfig,
    ServiceClient,
    generate_pilot,
    load_pilot,
    pilot_object_sets,
    simulate_pilot,
)

if TYPE_CHECKING:
    import numpy as np

    from isacir.adapter import QueryAdapter
    from isacir.foundation import Foundation
    from isacir.query import QueryEncoder


def prepare_pilot(
    bench_dir: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    language: str = "en",
) -> dict[str, Any]:
    """The pilot's split, gallery and edge model for a ``bench shapes`` cache (each cached).

    Returns the paths a service and a simulator need: ``pilot``, ``gallery``, ``query_encoder``,
    ``edge``, ``foundation``. For operators who write ``language`` the query encoder is the ISA
    encoder with that language's template (:func:`encoder_in_language`).
    """
    from isacir.export import export_edge
    from isacir.gallery import Gallery

    bench_dir = Path(bench_dir)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig()
    _, fnd, qe_path, qe = cached_isa(bench_dir, config, log, progress)
    root = bench_dir / "pilots" / pilot.key(config.world)
    qe_path, qe = encoder_in_language(qe_path, qe, fnd, config.language_template(language), root, language)
    split = generate_pilot(root / "split", config.world, pilot)
    edge = root / f"edge-{qe.fingerprint}"
    if not (edge / "edge.json").is_file():
        log(f"pilot: exporting the ISA encoder to ONNX -> {edge}")
        export_edge(qe, edge)
    gallery_dir = root / f"gallery-{fnd.fingerprint}"
    gallery = Gallery.open_or_create(gallery_dir, fnd)
    report = gallery.index([str(split / "gallery")], fnd, progress=progress)
    log(f"pilot gallery {gallery_dir}: {report.summary()}")
    gallery.close()
    paths = {
        "pilot": str(split),
        "gallery": str(gallery_dir),
        "query_encoder": str(qe_path),
        "edge": str(edge),
        "foundation": fnd.name,
    }
    atomic_write_text(root / "pilot-run.json", json.dumps(paths, indent=2))
    return paths


def encoder_in_language(
    path: Path, qe: QueryEncoder, fnd: Foundation, template: str, root: Path, language: str
) -> tuple[Path, QueryEncoder]:
    """``qe`` composing its queries in ``template`` (saved once under ``root``), or ``qe`` itself
    when it already does.

    The Shapes-CIR encoders learn their tokens in the template's empty form, ``{}``, which every
    language's template shares, so the same weights serve either language; only the text around
    the modifier differs. A customer whose operators write Japanese trains with ``--template ja``
    instead. The copy is another version (its fingerprint covers the template), with its own edge
    export.
    """
    from isacir.query import QueryEncoder

    if qe.config.template == template:
        return path, qe
    dest = root / f"encoder-{language}-{qe.fingerprint}"
    if not (dest / "config.json").is_file():
        copy = QueryEncoder.from_pretrained(path, foundation=fnd)
        copy.config = replace(copy.config, template=template)
        copy.save_pretrained(dest)  # atomic
    return dest, QueryEncoder.from_pretrained(dest, foundation=fnd).eval()


def gallery_ids(gallery_dir: str | Path, split: str | Path) -> dict[str, int]:
    """The served gallery's id of every split image, keyed as the split names them."""
    from isacir.gallery import Gallery

    g = Gallery.open(gallery_dir)
    try:
        root = Path(split).resolve()
        out = {}
        for item in g.items():
            p = Path(item["path"]).resolve()
            if p.is_relative_to(root):
                out[p.relative_to(root).as_posix()] = int(item["id"])
        return out
    finally:
        g.close()


def feedback_stem(
    seed: int, settings: AdaptSettings, operators: OperatorConfig, japanese_fraction: float = 0.0, language: str = "en"
) -> str:
    """The name of a ``bench feedback`` run's results: ``feedback-{operators}-seed{S}``, with the
    recipe when it is not the default and the adapters' seed when it is not the world's; on a
    bilingual world, its Japanese share and the operators' language (``-ja5-ja``)."""
    recipe = "" if settings.recipe == "auto" else f"-{settings.recipe}"
    adapt_seed = "" if settings.seed == seed else f"-adapt{settings.seed}"
    world = f"-ja{round(japanese_fraction * 100)}-{language}" if japanese_fraction else ""
    return f"feedback-{operators.kind}-seed{seed}{world}{recipe}{adapt_seed}"


def run_feedback_bench(
    out: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    settings: AdaptSettings | None = None,
    operators: OperatorConfig | None = None,
    k: int = 10,
    config: ShapesBenchConfig | None = None,
    eval_blocks: int = EVAL_BLOCKS,
    novel_objects: bool = False,
    curve: tuple[int, ...] = (),
    log: Callable[[str], None] = print,
    progress: bool = True,
    language: str = "en",
) -> dict[str, Any]:
    """Pilot, the served adapter, its evaluation; writes ``{stem}.json`` into ``out`` and returns
    the summary (the last JSON line of ``bench feedback``; :func:`feedback_stem` names the run).

    ``language`` is what the operators write: Japanese needs a bilingual world
    (``config.world.japanese_fraction``); the service then composes in the Japanese template, and
    the evaluation stream and test split are judged with their Japanese modifiers.

    The served adapter is what ``isacir adapt`` saves with ``settings`` (default: its default, the
    recipe chosen by folds) on all the pilot's feedback, served as saved: its pair and top-1 guard.
    It is judged on the evaluation stream (:mod:`.evaluation`), which nothing chose anything on, and,
    for reference, on the world's test split. ``curve`` adds adapters trained the same way on the
    first N logged queries (judged on the stream's R@1 and R@10 only).
    """
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter
    from isacir.edge.runner import EdgeEncoder
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app
    from isacir.serve.local import LocalServer

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig()
    settings = settings or AdaptSettings.auto(seed=seed)
    operators = operators or OperatorConfig(seed=seed)
    operators.check()
    settings.check()
    if eval_blocks < 1:
        raise ConfigError(f"--eval-blocks must be at least 1, got {eval_blocks}")
    if language != "en" and not config.world.japanese_fraction:
        raise ConfigError(f"operators who write {language!r} need a bilingual world (a Japanese share above 0)")
    template = config.language_template(language)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    paths = prepare_pilot(out, seed, pilot, config, log, progress, language)
    timings["prepare_s"] = time.perf_counter() - t0
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()
    stem = feedback_stem(seed, settings, operators, config.world.japanese_fraction, language)

    # the pilot, through the device path and HTTP; a fresh log every run
    run = out / "feedback" / f"{stem.removeprefix('feedback-')}-{pilot.key(config.world)}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    key = secrets.token_hex(16)
    gallery = Gallery.open(paths["gallery"])
    state = ServiceState(
        gallery, fnd, qe, ServeSettings(api_keys=(key,), feedback_db=run / "feedback.sqlite", upload_dir=run / "up")
    )
    t = time.perf_counter()
    with LocalServer(create_app(state)) as server:
        pilot_stats = simulate_pilot(
            paths["pilot"],
            ServiceClient(server.url, key),
            EdgeEncoder(paths["edge"]),
            gallery_ids(paths["gallery"], paths["pilot"]),
            k=k,
            limit=pilot.queries,
            progress=progress,
            log=log,
            operators=operators,
            language=language,
        )
    timings["pilot_s"] = time.perf_counter() - t
    store = FeedbackStore(run / "feedback.sqlite")
    logged = [q["text"] for q in store.queries()]

    # the served adapter: isacir adapt on all the pilot's feedback, as an operator would run it
    t = time.perf_counter()
    report = adapt(gallery, fnd, qe, store, run / "adapter", settings, progress=progress)
    served_adapter = QueryAdapter.from_pretrained(run / "adapter")
    timings["adapt_s"] = time.perf_counter() - t
    log(
        f"served adapter {report['fingerprint']}: recipe {report.get('recipe', {}).get('chosen', settings.recipe)}, "
        f"interpolation {served_adapter.interpolation}, guard margin {served_adapter.guard_margin}, "
        f"{'promotable' if report['promotable'] else 'not promotable: ' + '; '.join(report['reasons'])}"
    )

    # a learning curve's adapters, trained the same way on the first N logged queries
    curve_adapters = {}
    for n in curve:
        t = time.perf_counter()
        adapt(gallery, fnd, qe, store, run / f"adapter-{n}", replace(settings, max_queries=n), progress=progress)
        curve_adapters[f"curve{n}"] = QueryAdapter.from_pretrained(run / f"adapter-{n}")
        timings[f"adapt_{n}_s"] = time.perf_counter() - t

    # the evaluation stream (every adapter in one pass), then the world's test split for reference
    t = time.perf_counter()
    shown = pilot_object_sets(load_pilot(paths["pilot"]))
    avoid = shown if novel_objects else set()
    world_dir = out / "worlds" / config.world.key()
    tag = f"-novel{pilot.key(config.world)}" if novel_objects else ""
    blocks = [
        generate_evaluation(out / "evaluation" / f"{config.world.key()}-{i}{tag}", config.world, i, avoid)
        for i in range(1, eval_blocks + 1)
    ]
    judged = judge_stream(
        blocks, fnd, qe, template, served_adapter, run / "scratch", progress, others=curve_adapters, language=language
    )
    served = served_report(judged, used_phrasings(logged))
    overlap = overlap_report(judged, shown, logged)
    timings["evaluate_s"] = time.perf_counter() - t
    test = _TestSet(world_dir, fnd, qe, template, progress, language=language)
    test_before, before_rank = test.evaluate(None)
    test_after, after_rank = test.evaluate(served_adapter)
    test_split = {
        "before": test_before,
        "after": test_after,
        "flip_rate": _flip_rate(test, before_rank, after_rank),
        "queries": len(test.bench.queries),
    }

    points = {str(n): {m: pct(judged.arr(f"curve{n}@{m[2:]}")) for m in ("R@1", "R@10")} for n in curve}
    gallery.close()
    timings["total_s"] = time.perf_counter() - t0

    goals = served_goals(served) if language == "en" else language_goals(served)
    summary = {
        "seed": seed,
        "operators": operators.kind,
        **({"language": language, "japanese_fraction": config.world.japanese_fraction} if language != "en" else {}),
        "verdicts": pilot_stats["judged"],
        "served": served,
        "overlap": overlap,
        "timings": {k_: round(v, 1) for k_, v in timings.items()},
    }
    detail = {
        **summary,
        "goals": goals,
        "recipe": report.get("recipe"),
        "adapter": {f: report.get(f) for f in ("fingerprint", "promotable", "reasons", "holdout", "counts", "tuning")},
        "served_pair": {"interpolation": served_adapter.interpolation, "guard_margin": served_adapter.guard_margin},
        "test_split": test_split,
        "curve": points,
        "evaluation": {"blocks": eval_blocks, "novel_objects": novel_objects, "queries": len(judged)},
        "pilot": {k_: v for k_, v in pilot_stats.items() if k_ != "texts"},
        "operators_config": asdict(operators),
        "settings": asdict(settings),
        "pilot_config": asdict(pilot),
        "left_out_phrasings": LEFT_OUT if language == "en" else LEFT_OUT_JA,
        "cpu": cpu_info(),
    }
    atomic_write_text((out / stem).with_suffix(".json"), json.dumps(detail, indent=2))
    return summary


def run_pilot_versions(
    out: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    settings: AdaptSettings | None = None,
    k: int = 10,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """A pilot of two versions: ISA for the first half, ISA + the adapter learned from it for the rest.

    Both halves log into one feedback database, as one service would across a roll-out; the
    pilot report (HTML and CSVs), the per-version chart and the summary land in
    ``out/pilot-versions-seed{S}/``. Returns the per-version summary.
    """
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter
    from isacir.edge.runner import EdgeEncoder
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.pilot import charts, pilot_summary
    from isacir.pilot.report import write_report
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app
    from isacir.serve.local import LocalServer

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig()
    settings = settings or AdaptSettings.auto(seed=seed)
    paths = prepare_pilot(out, seed, pilot, config, log, progress)
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()
    run = out / f"pilot-versions-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    db = run / "feedback.sqlite"
    key = secrets.token_hex(16)
    edge = EdgeEncoder(paths["edge"])
    ids = gallery_ids(paths["gallery"], paths["pilot"])
    half = pilot.queries // 2
    gallery = Gallery.open(paths["gallery"])
    halves: list[dict[str, Any]] = []
    adapter: QueryAdapter | None = None
    for part, start in (("first", 0), ("second", half)):
        settings_ = ServeSettings(api_keys=(key,), feedback_db=db, upload_dir=run / "up")
        state = ServiceState(gallery, fnd, qe, settings_, adapter=adapter)
        with LocalServer(create_app(state)) as server:
            stats = simulate_pilot(
                paths["pilot"],
                ServiceClient(server.url, key),
                edge,
                ids,
                k=k,
                start=start,
                limit=half if part == "first" else pilot.queries - half,
                progress=progress,
                log=log,
            )
        state.retriever.close()
        halves.append({"half": part, "version": state.version, **stats})
        if part == "first":
            report = adapt(gallery, fnd, qe, FeedbackStore(db), run / "adapter", settings, progress=progress)
            adapter = QueryAdapter.from_pretrained(run / "adapter")
            halves[-1]["adapter_report"] = {f: report[f] for f in ("promotable", "reasons", "holdout")}
    gallery.close()
    store = FeedbackStore(db)
    queries = list(store.queries())
    summary = pilot_summary(queries, "version", k)
    write_report(queries, run / "report.html", run / "csv")
    atomic_write_text(run / "versions.svg", charts.by_version(queries))
    result = {"seed": seed, "halves": halves, "versions": summary["groups"]}
    atomic_write_text(run / "summary.json", json.dumps(result, indent=2))
    return result


class _TestSet:
    """A Shapes-CIR benchmark with its gallery encoded once, evaluated with or without an adapter."""

    def __init__(
        self,
        world: Path,
        fnd: Foundation,
        qe: QueryEncoder,
        template: str,
        progress: bool,
        gallery_vecs=None,
        language: str = "en",
    ):
        from isacir.evaluation.benchmarks import load_shapes
        from isacir.evaluation.evaluate import encode_gallery

        from .bench import _query_kinds, in_language

        self.bench = in_language(world, load_shapes(world), language)
        self.fnd, self.qe, self.template = fnd, qe, template
        self.kinds = _query_kinds(world)
        bench = self.bench
        self.names = list(bench.gallery)
        self.gallery_vecs = (
            gallery_vecs
            if gallery_vecs is not None
            else encode_gallery(fnd, [bench.gallery[n] for n in self.names], progress=progress)
        )

    def evaluate(
        self, adapter: QueryAdapter | None, token_source: Callable[[list], Any] | None = None
    ) -> tuple[dict[str, float], list[list[str]]]:
        from isacir.evaluation.evaluate import evaluate

        metrics, rankings = evaluate(
            self.bench,
            self.fnd,
            "isa",
            query_encoder=self.qe,
            template=self.template,
            gallery_vecs=self.gallery_vecs,
            progress=False,
            adapter=adapter,
            token_source=token_source,
        )
        return {k: round(metrics[k], 2) for k in METRICS}, rankings


def _flip_rate(test: _TestSet, before: list[list[str]], after: list[list[str]]) -> float | None:
    """Among test queries whose target was at rank 1 before, the share whose target is not after
    (the product's :func:`~isacir.adapter.flip_rate` over the test split's rankings by file)."""
    import numpy as np

    from isacir.adapter import flip_rate

    def top1(ranked: list[list[str]]) -> np.ndarray:
        return np.array(
            [bool(r) and r[0] in q.targets for q, r in zip(test.bench.queries, ranked, strict=True)], dtype=bool
        )

    rate, _, _ = flip_rate(top1(before), top1(after))
    return round(rate, 4) if rate is not None else None
